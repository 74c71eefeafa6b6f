"""``selectivekit evaluate`` on several probability folders (an ensemble, MC-dropout or TTA samples), with an
uncertainty measure and a temperature, and the report's sections of the voxel errors and the calibration.

The folders are written by nnU-Net's own export function (five "folds" predicting the same cases, as
``nnUNetv2_predict`` writes them with ``--save_probabilities``); every number of the report is compared with
a computation from the arrays the test made: the mean of the stacked probabilities, the measure's formula
written out here, Dice from the library's in-memory functions, ECE from a loop over the voxels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from selectivekit import io as skio
from selectivekit.cli import main
from selectivekit.segmentation import aurc_dice
from tests.test_io_folders import ITK_IDENTITY, K, _cases_3d, _nifti, _nnunet_writer, _softmax

FOLDS = 5


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Five nnU-Net prediction folders of the same 3 cases (the folds disagree), and the labels."""
    root = tmp_path_factory.mktemp("ensemble")
    write, markers = _nnunet_writer("SimpleITKIO", ".nii.gz", 3)
    rng = np.random.default_rng(7)
    base, labels = _cases_3d(rng, 3, (4, 5, 6))
    names = [f"case_{i:03d}" for i in range(3)]
    label_dir = root / "labelsTs"
    label_dir.mkdir()
    for name, label in zip(names, labels, strict=True):
        _nifti(label_dir / f"{name}.nii.gz", label, ITK_IDENTITY)
    folders = []
    for fold in range(FOLDS):
        out = root / f"fold_{fold}"
        for name, logits in zip(names, base, strict=True):
            write(out, name, logits + rng.normal(size=logits.shape) * 1.5)
        markers(out)
        folders.append(out)
    return {"folders": folders, "labels": label_dir, "names": names, "truth": labels, "root": root}


def _stack(ensemble, name: str) -> np.ndarray:
    """(S, K, x, y, z): each fold's stored probabilities, put in the labels' axis order by hand."""
    return np.stack(
        [
            np.load(folder / f"{name}.npz")["probabilities"].astype(np.float64).transpose(0, 3, 2, 1)
            for folder in ensemble["folders"]
        ]
    )


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=axis)


def _measure(stack: np.ndarray, measure: str) -> np.ndarray:
    """Each measure from its formula, on the whole stack at once (not streamed)."""
    mean = stack.mean(axis=0)
    if measure == "msp":
        return 1.0 - mean.max(axis=0)
    if measure == "entropy":
        return _entropy(mean, 0)
    if measure == "expected-entropy":
        return _entropy(stack, 1).mean(axis=0)
    if measure == "mutual-information":
        return np.maximum(_entropy(mean, 0) - _entropy(stack, 1).mean(axis=0), 0.0)
    top = mean.argmax(axis=0)
    if measure == "variance":
        return np.take_along_axis(stack, top[None, None], axis=1)[:, 0].var(axis=0)
    votes = np.stack([(stack.argmax(axis=1) == k).sum(axis=0) for k in range(K)])
    return 1.0 - votes.max(axis=0) / stack.shape[0]  # disagreement


def _run(ensemble, out: Path, *extra: str) -> dict:
    argv = ["evaluate", "--probs", *map(str, ensemble["folders"]), "--label", str(ensemble["labels"])]
    assert main([*argv, "--num-classes", str(K), "--quiet", "--out", str(out), *extra]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize(
    "measure", ["msp", "entropy", "expected-entropy", "mutual-information", "variance", "disagreement"]
)
def test_five_nnunet_folds_give_the_measure_of_their_mean(ensemble, tmp_path, measure):
    report = _run(ensemble, tmp_path / measure, "--uncertainty-measure", measure, "--exact")
    stacks = [_stack(ensemble, name) for name in ensemble["names"]]
    preds = [s.mean(axis=0).argmax(axis=0) for s in stacks]
    us = [_measure(s, measure) for s in stacks]
    expected = aurc_dice(preds, ensemble["truth"], us, num_classes=K)
    # the files are float32 and the accumulator works in float32: ties may break apart by rounding, so the
    # AURC agrees to a tolerance rather than to the bit
    assert report["aurc_dice"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert report["settings"]["uncertainty_measure"] == measure
    assert report["settings"]["source"] == "probs"
    assert sorted(report["settings"]["folders"]) == [
        "--label",
        "--probs",
        *(f"--probs#{i}" for i in range(2, 6)),
    ]
    markdown = (tmp_path / measure / "report.md").read_text()
    assert f"uncertainty `{measure}` of `--probs` (5 folders, their mean prediction)" in markdown
    # the voxel errors: AURC of the wrong voxels ranked by u, from scratch (all pairs of ranks)
    u = np.concatenate([x.astype(np.float32).ravel() for x in us])
    wrong = np.concatenate([(p != t).ravel() for p, t in zip(preds, ensemble["truth"], strict=True)])
    assert report["voxel_errors"]["aurc"] == pytest.approx(_aurc_by_loop(u, wrong), rel=1e-5, abs=1e-9)


def _aurc_by_loop(u: np.ndarray, wrong: np.ndarray) -> float:
    """AURC by the step rule, from scratch: each group of tied u is accepted whole; the area adds the
    group's share of the voxels times the risk of every voxel accepted up to the group's end."""
    order = np.argsort(u, kind="stable")
    u, wrong = u[order], wrong[order]
    n, total, start, errors = u.size, 0.0, 0, 0
    while start < n:
        stop = start
        while stop < n and u[stop] == u[start]:
            stop += 1
        errors += int(wrong[start:stop].sum())
        total += (stop - start) / n * errors / stop
        start = stop
    return total


def test_calibration_section_equals_a_loop_over_the_voxels(ensemble, tmp_path):
    report = _run(ensemble, tmp_path / "r", "--exact")
    means = [_stack(ensemble, name).mean(axis=0) for name in ensemble["names"]]
    conf = np.concatenate([m.max(axis=0).ravel() for m in means])
    correct = np.concatenate(
        [(m.argmax(axis=0) == t).ravel() for m, t in zip(means, ensemble["truth"], strict=True)]
    )
    bins = np.zeros((15, 3))
    for c, ok in zip(conf, correct, strict=True):
        b = max(0, math.ceil(c * 15) - 1)  # (b/15, (b+1)/15], 0 in the first bin
        bins[b] += (1, c, ok)
    ece = sum(abs(acc - cs) for _, cs, acc in bins) / conf.size
    section = report["calibration"]
    assert section["n_bins"] == 15
    assert section["regions"]["all"]["ece"] == pytest.approx(ece, rel=1e-5)
    assert section["regions"]["all"]["voxels"] == conf.size
    assert section["regions"]["all"]["bins"]["count"] == [int(x) for x in bins[:, 0]]
    onehot = [np.eye(K)[t].transpose(3, 0, 1, 2) for t in ensemble["truth"]]
    brier = sum(float(((m - o) ** 2).sum()) for m, o in zip(means, onehot, strict=True)) / conf.size
    nll = -sum(
        float(np.log(np.take_along_axis(m, t[None], 0)).sum())
        for m, t in zip(means, ensemble["truth"], strict=True)
    )
    assert section["regions"]["all"]["brier"] == pytest.approx(brier, rel=1e-5)
    assert section["regions"]["all"]["nll"] == pytest.approx(nll / conf.size, rel=1e-5)
    # the foreground region: true or predicted class >= 1
    fg = np.concatenate(
        [((t != 0) | (m.argmax(0) != 0)).ravel() for m, t in zip(means, ensemble["truth"], strict=True)]
    )
    assert section["regions"]["foreground"]["voxels"] == int(fg.sum())
    assert set(report["per_image"][0]["calibration"]) == {"ece_all", "ece_foreground"}
    assert (tmp_path / "r" / "reliability.png").stat().st_size > 1000
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Calibration" in markdown and "![Reliability diagram](reliability.png)" in markdown
    assert "## Voxel errors" in markdown
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<h2" in html and "Calibration" in html and "data:image/png;base64" in html


def test_a_temperature_is_the_softmax_of_the_scaled_logits(ensemble, tmp_path):
    from selectivekit import TemperatureScaling

    path = tmp_path / "t.json"
    TemperatureScaling((2.5,), 1.0, 0.9, 100).to_json(path)
    report = _run(
        ensemble, tmp_path / "r", "--temperature", str(path), "--uncertainty-measure", "entropy", "--exact"
    )
    assert report["settings"]["temperature"] == 2.5
    stacks = []
    for name in ensemble["names"]:
        stack = _stack(ensemble, name)
        stacks.append(_softmax(np.log(stack) / 2.5, axis=1))
    preds = [s.mean(axis=0).argmax(axis=0) for s in stacks]
    us = [_measure(s, "entropy") for s in stacks]
    expected = aurc_dice(preds, ensemble["truth"], us, num_classes=K)
    assert report["aurc_dice"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    cold = _run(ensemble, tmp_path / "cold", "--uncertainty-measure", "entropy", "--exact")
    assert report["calibration"]["regions"]["all"]["ece"] != cold["calibration"]["regions"]["all"]["ece"]


def test_workers_give_the_same_report(ensemble, tmp_path):
    one = _run(ensemble, tmp_path / "one", "--uncertainty-measure", "mutual-information")
    two = _run(ensemble, tmp_path / "two", "--uncertainty-measure", "mutual-information", "--workers", "2")
    assert (tmp_path / "one" / "report.json").read_bytes() == (tmp_path / "two" / "report.json").read_bytes()
    assert one["calibration"] == two["calibration"]


def test_read_case_streams_one_fold_at_a_time(ensemble):
    folders = {"label": ensemble["labels"]} | {
        ("probs" if i == 0 else f"probs#{i + 1}"): f for i, f in enumerate(ensemble["folders"])
    }
    roles = [r for r in folders if r != "label"]
    case = skio.pair_files(folders, array_roles=roles)[0]
    arrays = skio.read_case(
        case, num_classes=K, pred=None, uncertainty=None, probs=roles, uncertainty_measure="variance"
    )
    stack = _stack(ensemble, case.name)
    np.testing.assert_allclose(arrays.probs, stack.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(arrays.uncertainty, _measure(stack, "variance"), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(arrays.pred, stack.mean(axis=0).argmax(axis=0))
    assert (
        skio.load_case(case, num_classes=K, pred=None, uncertainty=None, probs=roles)[2].shape
        == arrays.pred.shape
    )


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--uncertainty-measure", "mutual-information"], 2, "needs several predictions of each case"),
        (
            ["--temperature", "missing.json"],
            1,
            "`--temperature` file 'missing.json' is not a temperature file",
        ),
    ],
)
def test_one_folder_refusals(ensemble, tmp_path, capsys, extra, code, message):
    argv = ["evaluate", "--probs", str(ensemble["folders"][0]), "--label", str(ensemble["labels"])]
    capsys.readouterr()
    assert main([*argv, "--num-classes", str(K), "--out", str(tmp_path / "o"), *extra]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_refusals_of_the_new_options(ensemble, tmp_path, capsys):
    from selectivekit import TemperatureScaling

    per_class = tmp_path / "per_class.json"
    TemperatureScaling((1.0, 2.0, 3.0), 1.0, 0.9, 100).to_json(per_class)
    fold = str(ensemble["folders"][0])
    label = str(ensemble["labels"])
    cases = [
        (["--probs", fold, fold], "names a folder twice"),
        (["--probs", fold, "--temperature", str(per_class)], "holds 3 temperatures (one per class)"),
        (
            ["--uncertainty", fold, "--pred", fold, "--uncertainty-measure", "entropy"],
            "`--uncertainty-measure` applies to `--probs` only",
        ),
        (
            ["--uncertainty", fold, "--pred", fold, "--temperature", str(per_class)],
            "`--temperature` applies to `--probs` only",
        ),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert (
            main(["evaluate", *args, "--label", label, "--num-classes", str(K), "--out", str(tmp_path / "o")])
            == 2
        )
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # a bad file in the third folder is named with its folder
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ensemble["names"]:
        probs = np.load(ensemble["folders"][0] / f"{name}.npz")["probabilities"]
        np.save(bad / f"{name}.npy", probs * 2)
    capsys.readouterr()
    argv = ["evaluate", "--probs", fold, str(ensemble["folders"][1]), str(bad), "--label", label]
    assert main([*argv, "--num-classes", str(K), "--out", str(tmp_path / "o"), "--reverse-axes"]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "`--probs` #3 file 'case_000.npy' must hold probabilities in [0, 1]" in err
    ), err


def test_a_threshold_applies_only_to_the_same_measure(ensemble, tmp_path, capsys):
    folders = [*map(str, ensemble["folders"])]
    label = str(ensemble["labels"])
    threshold = tmp_path / "threshold.json"
    argv = ["calibrate", "--probs", *folders, "--label", label, "--num-classes", str(K), "--quiet"]
    assert (
        main(
            [
                *argv,
                "--uncertainty-measure",
                "mutual-information",
                "--max-dice-loss",
                "0.5",
                "--out",
                str(threshold),
            ]
        )
        == 0
    )
    settings = json.loads(threshold.read_text())["settings"]
    assert settings["uncertainty_measure"] == "mutual-information" and settings["temperature"] is None
    evaluate = ["evaluate", "--probs", *folders, "--label", label, "--num-classes", str(K), "--quiet"]
    capsys.readouterr()
    assert main([*evaluate, "--threshold", str(threshold), "--out", str(tmp_path / "msp")]) == 2
    err = capsys.readouterr().err
    assert (
        "calibrated with uncertainty_measure='mutual-information'" in err
        and "uses uncertainty_measure='msp'" in err
    )
    same = [*evaluate, "--uncertainty-measure", "mutual-information", "--threshold", str(threshold)]
    assert main([*same, "--out", str(tmp_path / "mi")]) == 0
    assert "fixed_threshold" in json.loads((tmp_path / "mi" / "report.json").read_text())


def test_shards_carry_the_voxel_errors_calibration_and_case_scores(ensemble, tmp_path, capsys):
    extra = ["--uncertainty-measure", "entropy", "--case-score", "top-fraction"]
    single = _run(ensemble, tmp_path / "single", *extra)
    states = []
    for i in range(3):
        state = tmp_path / f"s{i}.npz"
        argv = ["evaluate", "--probs", *map(str, ensemble["folders"]), "--label", str(ensemble["labels"])]
        argv += ["--num-classes", str(K), "--quiet", *extra, "--shard", f"{i}/3", "--save-state", str(state)]
        assert main(argv) == 0
        states.append(str(state))
    assert main(["merge", *states, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert merged == single
    assert (tmp_path / "merged" / "reliability.png").is_file()
    assert (tmp_path / "merged" / "case_risk_coverage.png").is_file()
    # a damaged calibration state is named, not merged
    with np.load(states[1]) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["extra_all_counts"] = arrays["extra_all_counts"] + 1
    np.savez(tmp_path / "edited.npz", **arrays)
    capsys.readouterr()
    code = main(["merge", states[0], str(tmp_path / "edited.npz"), states[2], "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "edited.npz' is damaged" in err, err
    assert not (tmp_path / "bad").exists()
