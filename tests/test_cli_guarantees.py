"""The command line's intervals, paired tests and guaranteed thresholds, against the library.

``evaluate --ci`` against :func:`selectivekit.bootstrap_ci`, ``compare`` of two ``--ci`` runs against
:func:`selectivekit.compare_models`, ``calibrate`` against :func:`selectivekit.guaranteed_dice_threshold`, and
``evaluate --threshold`` against Dice recomputed after referring the voxels above the threshold.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

import selectivekit as sk
from selectivekit.cli import main
from selectivekit.guarantees import guaranteed_class_thresholds, guaranteed_joint_threshold

from .conftest import (
    cli_inputs,
    evaluate_argv,
    noisy_cases,
    npy_case_folders,
    read_report,
    run_cli,
    write_case_folders,
)
from .test_cli import COVERAGES, K

pytest.importorskip("scipy")
SHAPES = [(6, 7, 5), (5, 6, 4), (7, 5, 5), (6, 6, 6), (4, 8, 5), (5, 5, 7)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two models on the same 6 images, evaluated with --ci (model B: errors more clearly flagged)."""
    root = tmp_path_factory.mktemp("guarantees")
    preds_a, labels, us_a = noisy_cases(11, SHAPES, noise=0.2)
    preds_b, _, us_b = noisy_cases(12, SHAPES, noise=1.0)
    rng = np.random.default_rng(13)
    preds_b = [
        np.where(rng.random(lab.shape) < 0.5, lab, p).astype(np.uint8)
        for p, lab in zip(preds_b, labels, strict=True)
    ]
    folders_a = write_case_folders(root / "a", preds_a, labels, us_a)
    folders_b = write_case_folders(root / "b", preds_b, labels, us_b)
    out_a, out_b = root / "run_a", root / "run_b"
    assert main(evaluate_argv(folders_a, out_a, "--ci", "0.9", "--n-resamples", "300", "--seed", "3")) == 0
    assert (
        main(evaluate_argv(folders_b, out_b, "--ci", "0.9", "--n-resamples", "300", "--seed", "3", "--exact"))
        == 0
    )
    return {
        "root": root,
        "a": (preds_a, labels, us_a, folders_a, out_a),
        "b": (preds_b, labels, us_b, folders_b, out_b),
    }


def test_evaluate_ci_matches_bootstrap_ci(runs):
    for key in ("a", "b"):
        preds, labels, us, _, out = runs[key]
        report = read_report(out)
        want = sk.bootstrap_ci(
            ["aurc_dice", "dice_at_coverage"],
            preds,
            labels,
            us,
            num_classes=K,
            coverages=COVERAGES,
            confidence=0.9,
            n_resamples=300,
            seed=3,
        )
        ci = report["intervals"]
        assert ci["confidence"] == 0.9 and ci["n_resamples"] == 300 and ci["unit"] == "image"
        assert (out / ci["state_file"]).is_file()
        for name, got in [("aurc_dice", ci["aurc_dice"])] + [
            (f"{stat}@{row['requested']:g}", row[stat]) for row in ci["coverages"] for stat in ("mean", "p5")
        ]:
            w = want[name]
            assert got["estimate"] == pytest.approx(w.estimate, abs=1e-12), name
            assert got["low"] == pytest.approx(w.low, abs=1e-12), name
            assert got["high"] == pytest.approx(w.high, abs=1e-12), name
        markdown = (out / "report.md").read_text()
        assert "## Confidence intervals (90 %)" in markdown
        assert "Dice % (5th percentile) at coverage 0.70" in markdown


def test_compare_adds_paired_intervals_and_p_values(runs, tmp_path, capsys):
    preds_a, labels, us_a, _, out_a = runs["a"]
    preds_b, _, us_b, _, out_b = runs["b"]
    out = tmp_path / "cmp"
    capsys.readouterr()
    code, err = run_cli(
        ["compare", str(out_a), str(out_b), "--out", str(out), "--n-resamples", "200", "--seed", "5"]
    )
    assert code == 0, err
    comparison = json.loads((out / "comparison.json").read_text())
    paired = comparison["paired"]
    assert paired["available"] and paired["exact"] and paired["n_permutations"] == 2 ** len(SHAPES)
    want = sk.compare_models(
        preds_a, us_a, preds_b, us_b, labels, num_classes=K, coverages=COVERAGES, n_resamples=200, seed=5
    )
    rows = [("aurc_dice", paired["aurc_dice"])] + [
        (f"mean@{r['requested']:g}", r["mean"]) for r in paired["coverages"]
    ]
    for name, got in rows:
        w = want[name]
        assert got["difference"] == pytest.approx(w.estimate, abs=1e-12), name
        assert got["low"] == pytest.approx(w.low, abs=1e-12), name
        assert got["high"] == pytest.approx(w.high, abs=1e-12), name
        assert got["p_value"] == pytest.approx(w.p_value), name
    assert "## Paired comparison" in (out / "report.md").read_text()
    # the terminal prints the same intervals and p-values, and the warning of a 6-image comparison
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    labels_digits = [("AURC %", 3)] + [(f"Dice % at coverage {c:.2f}", 2) for c in COVERAGES]
    for (label, digits), (_, got) in zip(labels_digits, rows, strict=True):
        (line,) = [line for line in lines if line.startswith(label + " ") and "p = " in line]
        assert line.split()[-6:] == [
            f"{100 * got['difference']:+.{digits}f}",
            f"[{100 * got['low']:+.{digits}f},",
            f"{100 * got['high']:+.{digits}f}]",
            "p",
            "=",
            f"{got['p_value']:.4g}",
        ]
    assert "computed from only 6 images; with fewer than 10 images" in printed


def test_compare_without_state_still_works_and_says_why(runs, tmp_path):
    folders_a = runs["a"][3]
    plain = tmp_path / "plain"
    assert main(evaluate_argv(folders_a, plain)) == 0
    assert not (plain / "bootstrap_state.npz").exists() and "intervals" not in read_report(plain)
    out = tmp_path / "cmp"
    code, err = run_cli(["compare", str(plain), str(runs["b"][4]), "--out", str(out)])
    assert code == 0, err
    paired = json.loads((out / "comparison.json").read_text())["paired"]
    assert not paired["available"] and "--ci" in paired["reason"]
    assert "not computed" in (out / "report.md").read_text()


@pytest.mark.parametrize("delta", [None, 0.2])
def test_calibrate_then_evaluate_at_the_threshold(runs, tmp_path, delta):
    # calibrate on 30 images of model A's kind, evaluate on model A's test run
    preds, labels, us = noisy_cases(21, [(6, 6, 5)] * 30, noise=0.6)
    folders = write_case_folders(tmp_path / "cal", preds, labels, us)
    threshold_file = tmp_path / "threshold.json"
    argv = ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.15", "--out", str(threshold_file)]
    if delta is not None:
        argv += ["--delta", str(delta)]
    code, err = run_cli(argv)
    assert code == 0, err
    data = json.loads(threshold_file.read_text())
    want = sk.guaranteed_dice_threshold(preds, labels, us, num_classes=K, max_dice_loss=0.15, delta=delta)
    assert data["method"] == ("crc" if delta is None else "ltt") and not data["refers_all"]
    assert data["threshold"] == pytest.approx(want.threshold) and data["calibration"][
        "coverage"
    ] == pytest.approx(want.coverage)
    assert data["calibration"]["bound"] == pytest.approx(want.bound) and data["settings"]["num_classes"] == K

    test_preds, test_labels, test_us, test_folders, _ = runs["a"]
    out = tmp_path / "test"
    code, err = run_cli(evaluate_argv(test_folders, out, "--threshold", str(threshold_file)))
    assert code == 0, err
    fixed = read_report(out)["fixed_threshold"]
    t = data["threshold"]
    after = [np.where(u > t, lab, p) for p, lab, u in zip(test_preds, test_labels, test_us, strict=True)]
    direct = sk.dice_at_coverage(after, test_labels, test_us, 1.0, num_classes=K)[0]
    accepted = sum(int(np.sum(u <= np.float32(t))) for u in test_us)
    assert fixed["coverage"] == pytest.approx(accepted / sum(u.size for u in test_us))
    assert fixed["mean"] == pytest.approx(direct.mean) and fixed["p5"] == pytest.approx(direct.p5)
    per_image = [row["fixed_threshold"]["dice"] for row in read_report(out)["per_image"]]
    np.testing.assert_allclose(per_image, np.asarray(direct.per_image_dice))
    markdown = (out / "report.md").read_text()
    assert "## Fixed threshold" in markdown
    # the target in the report's unit, Dice in %: 0.15 is a Dice loss of 15 %, a Dice of at least 85 %
    assert "max Dice loss 15 % (a Dice of at least 85 %)" in markdown
    share = np.mean(1.0 - np.asarray(direct.per_image_dice) <= 0.15 + 1e-12)
    assert f"- images with a Dice of at least 85 %: {100 * share:.1f} %" in markdown


def test_calibrate_refers_everything_when_nothing_qualifies(runs, tmp_path):
    folders = runs["a"][3]
    threshold_file = tmp_path / "t.json"
    argv = ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.05", "--out", str(threshold_file)]
    code, err = run_cli(argv)  # 6 images: 1/7 > 0.05
    assert code == 0 and "refers everything" in err
    data = json.loads(threshold_file.read_text())
    assert data["threshold"] is None and data["refers_all"]
    out = tmp_path / "test"
    assert main(evaluate_argv(folders, out, "--threshold", str(threshold_file))) == 0
    fixed = read_report(out)["fixed_threshold"]
    assert fixed["refers_all"] and fixed["coverage"] == 0.0 and fixed["mean"] == 1.0
    # a second calibrate may replace its own file
    code, _ = run_cli(argv)
    assert code == 0


def _one_line_error(code: int, err: str, status: int, *expected: str) -> None:
    assert code == status, err
    assert "Traceback" not in err, err
    # one line; argparse's own usage errors print the usage first and the message on the last line
    lines = err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    for text in expected:
        assert text in err, err


def test_cli_guarantee_errors(runs, tmp_path):
    preds, labels, us, folders, out_a = runs["a"]
    bad = tmp_path / "bad"
    code, err = run_cli(evaluate_argv(folders, bad, "--ci", "1.5"))
    _one_line_error(code, err, 2, "`--ci` must be a number in (0, 1)")
    code, err = run_cli(evaluate_argv(folders, bad, "--seed", "1"))
    _one_line_error(code, err, 2, "apply to `--ci` only")
    code, err = run_cli(evaluate_argv(folders, bad, "--threshold", str(tmp_path / "missing.json")))
    _one_line_error(code, err, 1, "`--threshold`", "no such file")
    (tmp_path / "other.json").write_text('{"a": 1}')
    code, err = run_cli(evaluate_argv(folders, bad, "--threshold", str(tmp_path / "other.json")))
    _one_line_error(code, err, 1, "not written by `selectivekit calibrate`")
    threshold = {
        "kind": "selectivekit-threshold",
        "threshold": 0.5,
        "refers_all": False,
        "method": "crc",
        "max_dice_loss": 0.1,
        "delta": None,
        "calibration": {"n_images": 9, "coverage": 0.9, "loss": 0.05, "bound": 0.09, "p_value": None},
        "settings": {"num_classes": K + 1, "include_background": False, "source": "uncertainty"},
    }
    (tmp_path / "t.json").write_text(json.dumps(threshold))
    code, err = run_cli(evaluate_argv(folders, bad, "--threshold", str(tmp_path / "t.json")))
    _one_line_error(code, err, 2, "num_classes")
    assert not bad.exists()
    single = write_case_folders(tmp_path / "single", preds[:1], labels[:1], us[:1])
    code, err = run_cli(evaluate_argv(single, bad, "--ci", "0.95"))
    _one_line_error(code, err, 1, "at least 2 images")
    assert not bad.exists()
    base = ["calibrate", *cli_inputs(folders)]
    code, err = run_cli([*base, "--max-dice-loss", "0", "--out", str(tmp_path / "x.json")])
    _one_line_error(code, err, 2, "`--max-dice-loss` must be a number in (0, 1)")
    code, err = run_cli([*base, "--max-dice-loss", "0.1", "--delta", "1", "--out", str(tmp_path / "x.json")])
    _one_line_error(code, err, 2, "`--delta`")
    code, err = run_cli([*base, "--max-dice-loss", "0.1", "--out", str(tmp_path / "other.json")])
    _one_line_error(code, err, 1, "not a threshold file")
    assert json.loads((tmp_path / "other.json").read_text()) == {"a": 1}
    code, err = run_cli([*base, "--max-dice-loss", "0.1", "--out", str(tmp_path)])
    _one_line_error(code, err, 1, "must be a file name")
    code, err = run_cli(
        ["compare", str(out_a), str(runs["b"][4]), "--out", str(bad), "--n-permutations", "0"]
    )
    _one_line_error(code, err, 2, "`--n-permutations`")


def test_state_file_round_trip(runs):
    from selectivekit import guarantees

    preds, labels, us, _, out = runs["a"]
    state = guarantees.ImageState.load(Path(out) / "bootstrap_state.npz")
    direct = guarantees._state.image_state(preds, labels, us, K, False, None, "pred")
    assert state.n_items == direct.n_items
    np.testing.assert_allclose(state.a_matrix, direct.a_matrix)
    for got, want in zip(state.changed_dice, direct.changed_dice, strict=True):
        np.testing.assert_array_equal(got, want)
    assert math.isfinite(float(state.union[-1]))


@pytest.mark.parametrize("n_images", [3, 9, 10, 14])
def test_evaluate_ci_prints_the_intervals_and_warns_below_ten_images(tmp_path, capsys, n_images):
    """The terminal shows every interval of report.json; fewer than 10 images: a warning there, in
    report.md and in report.html, beside the intervals."""
    preds, labels, us = noisy_cases(20 + n_images, [(5, 6, 4)] * n_images)
    folders = write_case_folders(tmp_path / "in", preds, labels, us)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(evaluate_argv(folders, out, "--ci", "0.9", "--n-resamples", "50")) == 0
    printed = capsys.readouterr().out
    ci = read_report(out)["intervals"]
    assert f"90 % confidence intervals (bootstrap over the {n_images} images):" in printed
    expected = [("AURC %", ci["aurc_dice"], 3)] + [
        (f"{label} at coverage {row['requested']:.2f}", row[key], 2)
        for row in ci["coverages"]
        for key, label in (("mean", "Dice % (mean)"), ("p5", "Dice % (5th percentile)"))
    ]
    lines = printed.splitlines()
    for label, e, digits in expected:
        (line,) = [line for line in lines if line.strip().startswith(label + "  ")]
        numbers = line[len(label) + 2 :].translate(str.maketrans("[],", "   ")).split()
        assert numbers == [f"{100 * e[k]:.{digits}f}" for k in ("estimate", "low", "high")], label
    warning = f"computed from only {n_images} images; with fewer than 10 images"
    markdown = (out / "report.md").read_text()
    html_text = (out / "report.html").read_text()
    for text in (printed, markdown, html_text):
        assert (warning in text) == (n_images < 10)
    if n_images < 10:  # beside the intervals: right under their heading, before their table
        section = markdown[markdown.index("## Confidence intervals") :]
        assert section.index(warning) < section.index("| Statistic |")


# --- threshold files: every field checked; evaluate --threshold compares with the exact threshold -----------


def _calibrate(folders, out, *extra) -> list[str]:
    return ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """Small folders (float32 u), and the threshold files ``calibrate`` writes for them (crc and ltt)."""

    root = tmp_path_factory.mktemp("calibrated")
    rng = np.random.default_rng(11)
    preds = [rng.integers(0, 3, (8, 9)) for _ in range(8)]
    labels = [np.where(rng.random(p.shape) < 0.8, p, rng.integers(0, 3, p.shape)) for p in preds]
    us = [rng.random(p.shape).astype(np.float32) for p in preds]
    folders = npy_case_folders(root, preds, labels, us)
    files = {}
    for method, extra in (("crc", ()), ("ltt", ("--delta", "0.2"))):
        files[method] = root / f"{method}.json"
        code, err = run_cli(_calibrate(folders, files[method], *extra))
        assert code == 0, err
    return root, folders, {m: json.loads(f.read_text()) for m, f in files.items()}


def _set(data: dict, field: str, value) -> dict:

    data = copy.deepcopy(data)
    *parents, last = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()


TAMPERED = [
    ("crc", "max_dice_loss", 5),
    ("crc", "max_dice_loss", -1),
    ("crc", "max_dice_loss", "0.1"),
    ("ltt", "delta", 7),
    ("ltt", "delta", None),
    ("crc", "delta", 0.1),
    ("crc", "method", "magic"),
    ("crc", "refers_all", True),
    ("crc", "refers_all", _DELETE),
    ("crc", "threshold", 10**400),
    ("crc", "threshold", "0.5"),
    ("crc", "threshold", True),
    ("crc", "calibration", 5),
    ("crc", "calibration.n_images", 0),
    ("crc", "calibration.coverage", 1.5),
    ("crc", "calibration.loss", -0.1),
    ("crc", "calibration.bound", 0.9),
    ("crc", "calibration.p_value", 0.5),
    ("ltt", "calibration.p_value", None),
    ("crc", "settings", [1]),
    ("crc", "settings.num_classes", "3"),
    ("crc", "settings.include_background", "no"),
    ("crc", "settings.source", "logits"),
    ("crc", "settings.label_map", {"1": "one"}),
]


@pytest.mark.parametrize(
    ("method", "field", "value"),
    TAMPERED,
    ids=[f"{f}=missing" if v is _DELETE else f"{f}={v!r}"[:40] for _, f, v in TAMPERED],
)
def test_threshold_file_every_field_checked(calibrated, tmp_path, method, field, value):

    _, folders, files = calibrated
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(files[method], field, value)))
    out = tmp_path / "out"
    code, err = run_cli(evaluate_argv(folders, out, "--threshold", str(bad)))
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "bad.json" in err and f"`{field}`" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("settings.source", "probs", "source"),
        ("settings.num_classes", 4, "num_classes"),
        ("settings.include_background", True, "include_background"),
        ("settings.label_map", {"1": 2, "2": 1}, "label_map"),
        ("settings.label_map_labels", {"1": 1}, "label_map_labels"),
    ],
)
def test_threshold_file_from_other_settings_refused(calibrated, tmp_path, field, value, flag):

    _, folders, files = calibrated
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_set(files["crc"], field, value)))
    code, err = run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(other)))
    assert code == 2 and err.count("\n") == 1 and f"calibrated with {flag}=" in err, err


@pytest.mark.parametrize("method", ["crc", "ltt"])
def test_threshold_file_written_by_calibrate_accepted(calibrated, tmp_path, method):

    _, folders, files = calibrated
    good = tmp_path / "good.json"
    good.write_text(json.dumps(files[method]))
    assert run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(good)))[0] == 0
    assert read_report(tmp_path / "out")["fixed_threshold"]["threshold"] == files[method]["threshold"]


def _between(dtype, rng) -> tuple[list[np.ndarray], float]:
    """Maps of ``dtype`` and a float64 threshold that casting to ``dtype`` would move onto a used value."""
    if np.dtype(dtype).kind == "i":
        base = 2**60
        us = [base + rng.integers(0, 512, (8, 9)) for _ in range(4)]
        return us, float(base + 256)  # float64 rounds base+257..base+384 onto the threshold
    info = np.finfo(dtype)
    a = dtype(0.5)
    b = np.nextafter(a, dtype(1))
    t = float(a) + 0.75 * (float(b) - float(a))  # rounds to b in dtype
    assert dtype(t) == b and float(a) < t < float(b)
    values = np.array([a, b, np.nextafter(b, dtype(1)), dtype(0.25)], dtype=dtype)
    us = [values[rng.integers(0, 4, (8, 9))] for _ in range(4)]
    assert info.bits <= 64
    return us, t


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int64], ids=["float16", "float32", "int64"])
def test_evaluate_threshold_compares_exactly(calibrated, tmp_path, dtype):

    _, _, files = calibrated
    rng = np.random.default_rng(2)
    us, t = _between(dtype, rng)
    preds = [rng.integers(0, 3, u.shape) for u in us]
    labels = [np.where(rng.random(p.shape) < 0.7, p, rng.integers(0, 3, p.shape)) for p in preds]
    folders = npy_case_folders(tmp_path / "data", preds, labels, us)
    threshold = tmp_path / "t.json"
    threshold.write_text(json.dumps(_set(files["crc"], "threshold", t)))
    assert run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(threshold)))[0] == 0
    fixed = read_report(tmp_path / "out")["fixed_threshold"]
    accepted = [
        np.array([[int(v) <= t if dtype is np.int64 else float(v) <= t for v in row] for row in u])
        for u in us
    ]
    want_coverage = sum(int(a.sum()) for a in accepted) / sum(u.size for u in us)
    assert fixed["coverage"] == want_coverage
    after = [np.where(a, p, lab) for a, p, lab in zip(accepted, preds, labels, strict=True)]
    direct = sk.dice_at_coverage(after, labels, [np.zeros(u.shape) for u in us], 1.0, num_classes=3)[0]
    assert fixed["mean"] == pytest.approx(direct.mean, rel=1e-12)


# --- compare: the bootstrap state of each run checked -------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two models evaluated with --ci on the same 5 images."""
    pytest.importorskip("scipy")
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(9)
    labels = [rng.integers(0, 3, (6, 7)) for _ in range(5)]
    runs = []
    for model in range(2):
        preds = [np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape)) for t in labels]
        us = [rng.random(t.shape).astype(np.float32) for t in labels]
        folders = npy_case_folders(root / f"data{model}", preds, labels, us)
        out = root / f"run{model}"
        args = evaluate_argv(folders, out, "--ci", "0.9", "--n-resamples", "50")
        assert run_cli(args)[0] == 0
        runs.append(out)
    return runs


def _edit_state(key, value):
    def change(arrays):
        arrays[key] = value(arrays[key].copy()) if callable(value) else value
        return arrays

    return change


def _drop(key):
    def change(arrays):
        del arrays[key]
        return arrays

    return change


BOOTSTRAP_TAMPERING = {
    "version_99": _edit_state("format_version", np.int64(99)),
    "version_float": _edit_state("format_version", np.float64(1.0)),
    "thr_reversed": _edit_state("thr", lambda a: a[::-1]),
    "cnt_reversed": _edit_state("cnt", lambda a: a[::-1]),
    "chg_t_reversed": _edit_state("chg_t", lambda a: a[::-1]),
    "chg_d_above_one": _edit_state("chg_d", lambda a: a + 1.5),
    "lengths_moved": _edit_state("lengths", lambda a: a + np.r_[1, -1, np.zeros(a.size - 2, int)]),
    "n_vox_changed": _edit_state("n_vox", lambda a: a + 1),
    "thr_nan": _edit_state("thr", lambda a: np.where(np.arange(a.size) == 3, np.nan, a)),
    "cnt_float": _edit_state("cnt", lambda a: a.astype(np.float64)),
    "one_image_less": _edit_state("changes", lambda a: a[:-1]),
    "missing_chg_d": _drop("chg_d"),
}


@pytest.mark.parametrize("name", sorted(BOOTSTRAP_TAMPERING))
def test_compare_refuses_tampered_bootstrap_state(two_runs, tmp_path, name):
    import shutil

    run_a = tmp_path / "run_a"
    shutil.copytree(two_runs[0], run_a)
    state = run_a / "bootstrap_state.npz"
    with np.load(state) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(state, **BOOTSTRAP_TAMPERING[name](arrays))
    out = tmp_path / "cmp"
    code, err = run_cli(["compare", str(run_a), str(two_runs[1]), "--out", str(out), "--n-resamples", "20"])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "`RUN_A`" in err and "bootstrap_state.npz" in err and "internal error" not in err, err
    assert not out.exists()


def test_compare_accepts_untouched_bootstrap_states(two_runs, tmp_path):
    out = tmp_path / "cmp"
    code, err = run_cli(
        ["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--n-resamples", "20"]
    )
    assert code == 0, err
    assert json.loads((out / "comparison.json").read_text())["paired"]["available"]


# --- calibrate: per structure, several risks, the Waudby-Smith-Ramdas bound --------------------------------


@pytest.mark.parametrize(
    ("extra", "delta"),
    [
        (("--per-structure",), None),
        (("--per-structure", "--bound", "wsr"), 0.2),
        (("--max-worst-dice-loss", "0.3"), 0.2),
    ],
)
def test_calibrate_per_structure_and_worst_structure(tmp_path, extra, delta):
    preds, labels, us = noisy_cases(22, [(6, 6, 5)] * 40, noise=0.5)
    folders = write_case_folders(tmp_path / "cal", preds, labels, us)
    out = tmp_path / "threshold.json"
    argv = ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.2", "--out", str(out), *extra]
    argv += [] if delta is None else ["--delta", str(delta)]
    code, err = run_cli(argv)
    assert code == 0, err
    data = json.loads(out.read_text())
    bound = "wsr" if "wsr" in extra else "hoeffding-bentkus"
    common = {"num_classes": K, "delta": delta, "bound": bound}
    if "--per-structure" in extra:
        want = guaranteed_class_thresholds(preds, labels, us, max_dice_loss=0.2, **common)
        assert set(data["risks"]) == {f"class {k}" for k in want.per_class}
        for k, r in want.per_class.items():
            entry = data["risks"][f"class {k}"]
            assert entry["threshold"] == pytest.approx(r.threshold) and entry["bound"] == pytest.approx(
                r.bound[k]
            )
        assert "each evaluated class k" in data["guarantee"]
    else:
        want = guaranteed_joint_threshold(
            preds, labels, us, max_dice_loss={"mean": 0.2, "worst": 0.3}, **common
        )
        assert data["risks"]["worst"]["bound"] == pytest.approx(want.bound["worst"])
        assert "lowest class Dice] <= 0.3" in data["guarantee"]
    assert not data["refers_all"] and data["threshold"] == pytest.approx(want.threshold)
    assert data["calibration"]["coverage"] == pytest.approx(want.coverage)
    assert data.get("bound") == (None if delta is None else bound)
    # evaluate reads the file: the fixed threshold is the combined one
    test_out = tmp_path / "test"
    code, err = run_cli(evaluate_argv(folders, test_out, "--threshold", str(out)))
    assert code == 0, err
    assert read_report(test_out)["fixed_threshold"]["coverage"] == pytest.approx(want.coverage)


def test_calibrate_bound_needs_delta_and_options_exclude_each_other(runs, tmp_path):
    folders = runs["a"][3]
    base = ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.2", "--out", str(tmp_path / "t.json")]
    code, err = run_cli([*base, "--bound", "wsr"])
    _one_line_error(code, err, 2, "`--bound`", "`--delta`")
    code, err = run_cli([*base, "--per-structure", "--max-worst-dice-loss", "0.3"])
    assert code == 2 and "not allowed with argument" in err
    code, err = run_cli([*base, "--max-worst-dice-loss", "1.5"])
    assert code == 2 and "--max-worst-dice-loss" in err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("risks", {}), ("risks.mean.bound", 0.9), ("risks.mean.max_dice_loss", 2), ("bound", "wilson")],
)
def test_threshold_file_risks_checked(calibrated, tmp_path, field, value):
    _, folders, files = calibrated
    data = copy.deepcopy(files["ltt"])
    data["risks"] = {"mean": {"max_dice_loss": 0.3, "loss": 0.1, "bound": 0.2}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(data, field, value)))
    code, err = run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(bad)))
    _one_line_error(code, err, 1, f"`{field}`")
