"""The command line end to end, on small NIfTI, PNG/TIFF and NumPy folders written here.

Reports are checked against the library functions called directly on the same arrays: the exact path against
``selectivekit.segmentation``, the default streaming path against ``SegmentationAccumulator`` fed the same
images, and ``compare`` against ``compare_at_coverage``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selectivekit as sk
from selectivekit import uncertainty_from_logits
from selectivekit.cli import main
from selectivekit.segmentation import aurc_dice, compare_at_coverage, dice_at_coverage, dice_coverage_curve
from tests.conftest import (
    ROOT,
    evaluate_argv,
    noisy_cases,
    npy_case_folders,
    read_report,
    run_cli,
    save_nifti,
    write_case_folders,
)

COVERAGES = [0.95, 0.9, 0.8, 0.7]
K = 3


def _check_against(report: dict, results, aurc: float, names: list[str], voxels: int) -> None:
    """``results``: DiceAtCoverage for COVERAGES + [1.0], from the library on the same arrays."""
    assert report["n_images"] == len(names)
    assert report["n_voxels"] == voxels
    assert report["aurc_dice"] == pytest.approx(aurc, rel=1e-12, abs=1e-15)
    assert [row["requested"] for row in report["coverages"]] == COVERAGES
    for row, result in zip(report["coverages"], results[:-1], strict=True):
        assert row["coverage"] == pytest.approx(result.coverage, rel=1e-12)
        assert row["threshold"] == pytest.approx(float(result.threshold), rel=1e-6)
        for key in ("mean", "std", "p5"):
            assert row[key] == pytest.approx(getattr(result, key), rel=1e-12, abs=1e-15)
    full = results[-1]
    assert report["dice_full"]["mean"] == pytest.approx(full.mean, rel=1e-12)
    assert [row["name"] for row in report["per_image"]] == names
    for i, row in enumerate(report["per_image"]):
        assert row["dice_full"] == pytest.approx(float(full.per_image_dice[i]), rel=1e-12)
        np.testing.assert_allclose(row["dice_full_per_class"], np.asarray(full.per_class_dice)[i], rtol=1e-12)
        for entry, result in zip(row["coverages"], results[:-1], strict=True):
            assert entry["dice"] == pytest.approx(float(result.per_image_dice[i]), rel=1e-12)
            assert entry["coverage"] == pytest.approx(float(result.per_image_coverage[i]), rel=1e-12)


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------------------------------
# evaluate, exact and streaming, three kinds of folders


@pytest.fixture(scope="module")
def nifti_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nifti")
    shapes = [(9, 8, 6), (7, 10, 5), (8, 8, 8), (6, 9, 7), (10, 6, 6)]  # images of different shapes
    preds, labels, us = noisy_cases(0, shapes)
    folders = write_case_folders(root, preds, labels, us)
    return root, folders, (preds, labels, us)


def test_evaluate_nifti_exact_matches_the_library(nifti_run):
    root, folders, (preds, labels, us) = nifti_run
    out = root / "exact"
    assert main(evaluate_argv(folders, out, "--exact")) == 0
    report = read_report(out)
    results = dice_at_coverage(preds, labels, us, [*COVERAGES, 1.0], num_classes=K)
    aurc = aurc_dice(preds, labels, us, num_classes=K)
    names = [f"case_{i:02d}" for i in range(len(preds))]
    _check_against(report, results, aurc, names, sum(p.size for p in preds))
    assert report["settings"]["mode"] == "exact"
    assert report["classes"] == [1, 2]
    curve = dice_coverage_curve(preds, labels, us, num_classes=K)
    with np.load(out / "curve.npz") as stored:
        np.testing.assert_allclose(stored["coverage"], curve.coverage)
        np.testing.assert_allclose(stored["mean_dice"], curve.mean_dice)
    for name in ("report.md", "risk_coverage.png", "dice_coverage.png", "dice_histogram.png"):
        assert (out / name).stat().st_size > 0
    for name in ("risk_coverage.png", "dice_coverage.png", "dice_histogram.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 100
    markdown = (out / "report.md").read_text()
    first = report["coverages"][0]
    assert f"{100 * report['aurc_dice']:.3f}**" in markdown
    assert f"| 0.95 | {first['coverage']:.3f} | {first['threshold']:#.4g} |" in markdown
    assert f"{100 * first['mean']:.2f} ± {100 * first['std']:.2f} | {100 * first['p5']:.2f} |" in markdown
    _no_leftovers(root)


def test_evaluate_nifti_streaming_matches_the_accumulator(nifti_run):
    from selectivekit.streaming import SegmentationAccumulator

    root, folders, (preds, labels, us) = nifti_run
    out = root / "streaming"
    assert main(evaluate_argv(folders, out)) == 0
    report = read_report(out)
    assert report["settings"]["mode"] == "streaming"
    accumulator = SegmentationAccumulator(num_classes=K)
    for p, l, u in zip(preds, labels, us, strict=True):
        accumulator.update(p, l, u)
    results = accumulator.dice_at_coverage([*COVERAGES, 1.0])
    names = [f"case_{i:02d}" for i in range(len(preds))]
    _check_against(report, results, accumulator.aurc_dice(), names, sum(p.size for p in preds))
    # and close to the exact values (the accumulator collects u on a bfloat16 grid)
    exact_full = dice_at_coverage(preds, labels, us, 1.0, num_classes=K)[0]
    assert report["dice_full"]["mean"] == pytest.approx(exact_full.mean, rel=1e-12)
    assert report["aurc_dice"] == pytest.approx(aurc_dice(preds, labels, us, num_classes=K), abs=2e-3)


def test_evaluate_png_tiff_with_label_map(tmp_path):
    preds, labels, us = noisy_cases(1, [(12, 16), (10, 14), (16, 12)])
    stored = np.array([0, 128, 255], np.uint8)  # classes written as grey levels
    for name in ("pred", "label", "unc"):
        (tmp_path / name).mkdir()
    for i, (p, l, u) in enumerate(zip(preds, labels, us, strict=True)):
        Image.fromarray(stored[p]).save(tmp_path / "pred" / f"img{i}_seg.png")
        Image.fromarray(stored[l]).save(tmp_path / "label" / f"img{i}_gt.bmp")
        Image.fromarray(u).save(tmp_path / "unc" / f"img{i}_uncertainty.tif")  # float32 TIFF
    folders = {"pred": tmp_path / "pred", "label": tmp_path / "label", "unc": tmp_path / "unc"}
    out = tmp_path / "out"
    assert main(evaluate_argv(folders, out, "--exact", "--label-map", "128:1,255:2")) == 0
    results = dice_at_coverage(preds, labels, us, [*COVERAGES, 1.0], num_classes=K)
    aurc = aurc_dice(preds, labels, us, num_classes=K)
    _check_against(read_report(out), results, aurc, ["img0", "img1", "img2"], sum(p.size for p in preds))


def test_evaluate_npz_probabilities_without_pred(tmp_path):
    rng = np.random.default_rng(2)
    labels, logits = [], []
    for shape in [(3, 7, 6), (3, 5, 9)]:  # classes first, like nnU-Net
        label = rng.integers(0, K, size=shape[1:])
        logit = 4.0 * np.moveaxis(np.eye(K)[label], -1, 0) + rng.normal(size=shape)
        logit[:, 0, 0] = [60.0, 0.0, 0.0]  # saturated: 1 - max p is exactly 0 in float64
        labels.append(label.astype(np.int16))
        logits.append(logit)
    (tmp_path / "probs").mkdir()
    (tmp_path / "label").mkdir()
    for i, (label, logit) in enumerate(zip(labels, logits, strict=True)):
        z = np.exp(logit - logit.max(0))
        np.savez(tmp_path / "probs" / f"c{i}.npz", probabilities=z / z.sum(0))
        np.save(tmp_path / "label" / f"c{i}_label.npy", label)
    out = tmp_path / "out"
    args = ["evaluate", "--label", str(tmp_path / "label"), "--probs", str(tmp_path / "probs")]
    assert main([*args, "--num-classes", "3", "--out", str(out), "--exact", "--quiet"]) == 0
    preds = [logit.argmax(0) for logit in logits]
    us = [uncertainty_from_logits(logit, axis=0) for logit in logits]
    assert all(u[0, 0] > 0 for u in us)
    results = dice_at_coverage(preds, labels, us, [*COVERAGES, 1.0], num_classes=K)
    aurc = aurc_dice(preds, labels, us, num_classes=K)
    report = read_report(out)
    _check_against(report, results, aurc, ["c0", "c1"], sum(p.size for p in preds))
    assert report["settings"]["source"] == "probs"


def test_evaluate_replaces_a_previous_report_and_include_background(nifti_run, tmp_path):
    _root, folders, (preds, labels, us) = nifti_run
    out = tmp_path / "again"
    assert main(evaluate_argv(folders, out, "--exact", "--coverages", "0.5")) == 0
    assert main(evaluate_argv(folders, out, "--exact", "--coverages", "0.9", "--include-background")) == 0
    report = read_report(out)
    assert [row["requested"] for row in report["coverages"]] == [0.9]
    expected = dice_at_coverage(preds, labels, us, 0.9, num_classes=K, include_background=True)[0]
    assert report["coverages"][0]["mean"] == pytest.approx(expected.mean, rel=1e-12)
    assert report["classes"] == [0, 1, 2]
    _no_leftovers(tmp_path)


# --------------------------------------------------------------------------------------------------
# compare


def test_compare_matches_compare_at_coverage(nifti_run, tmp_path):
    _root, folders, (preds, labels, us) = nifti_run
    better = [
        (np.random.default_rng(9).random(u.shape) + 1.5 * (p != l)).astype(np.float32)
        for p, l, u in zip(preds, labels, us, strict=True)
    ]
    folders_b = dict(folders, unc=tmp_path / "unc_b")
    folders_b["unc"].mkdir()
    for i, u in enumerate(better):
        save_nifti(folders_b["unc"] / f"case_{i:02d}_unc.nii.gz", u)
    run_a, run_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "a-vs-b"
    assert main(evaluate_argv(folders, run_a, "--exact")) == 0
    assert main(evaluate_argv(folders_b, run_b, "--exact")) == 0
    assert (
        main(["compare", str(run_a), str(run_b), "--out", str(out), "--name-a", "base", "--name-b", "ours"])
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    results_a = dice_at_coverage(preds, labels, us, COVERAGES, num_classes=K)
    results_b = dice_at_coverage(preds, labels, better, COVERAGES, num_classes=K)
    assert comparison["n_images"] == len(preds)
    for row, ra, rb in zip(comparison["coverages"], results_a, results_b, strict=True):
        expected = compare_at_coverage(ra, rb)
        assert row["requested"] == ra.requested
        assert row["a"]["mean"] == pytest.approx(ra.mean, rel=1e-12)
        assert row["b"]["mean"] == pytest.approx(rb.mean, rel=1e-12)
        assert {int(q): v for q, v in row["quadrant_share"].items()} == pytest.approx(expected.quadrant_share)
        assert row["on_axis_share"] == pytest.approx(expected.on_axis_share)
    for i, row in enumerate(comparison["per_image"]):
        for entry, ra, rb in zip(row["coverages"], results_a, results_b, strict=True):
            expected = compare_at_coverage(ra, rb)
            assert entry["dice_difference"] == pytest.approx(float(expected.dice_difference[i]), abs=1e-12)
            assert entry["coverage_difference"] == pytest.approx(
                float(expected.coverage_difference[i]), abs=1e-12
            )
    markdown = (out / "report.md").read_text()
    assert "# base vs ours" in markdown
    assert (out / "figure2.png").stat().st_size > 0
    assert (out / "dice_coverage.png").stat().st_size > 0
    # the uncertainty that ranks the errors better has the lower AURC
    assert comparison["run_b"]["aurc_dice"] < comparison["run_a"]["aurc_dice"]


def test_evaluate_and_compare_print_the_headline_numbers(nifti_run, tmp_path, capsys):
    _root, folders, _ = nifti_run
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(evaluate_argv(folders, run_a, "--exact")) == 0
    printed = capsys.readouterr()
    report = read_report(run_a)
    lines = printed.out.splitlines()
    assert lines[0] == (
        f"{report['n_images']} images; AURC % (risk = 1 - mean Dice, lower is better): "
        f"{100 * report['aurc_dice']:.3f}"
    )
    assert re.split(r"\s{2,}", lines[1].strip()) == [
        "Coverage",
        "Realized coverage",
        "Dice % (mean ± std)",
        "Dice % (5th percentile)",
    ]
    full = report["dice_full"]
    assert lines[2].split() == ["1.00", "1.000", f"{100 * full['mean']:.2f}", "±", f"{100 * full['std']:.2f}",
                                f"{100 * full['p5']:.2f}"]  # fmt: skip
    for line, row in zip(lines[3:], report["coverages"], strict=True):
        assert line.split()[:3] == [
            f"{row['requested']:.2f}",
            f"{row['coverage']:.3f}",
            f"{100 * row['mean']:.2f}",
        ]
    assert "wrote" not in printed.out and "wrote" in printed.err  # results on stdout, status on stderr
    assert main(evaluate_argv(folders, run_b, "--exact")) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                str(run_a),
                str(run_b),
                "--out",
                str(tmp_path / "c"),
                "--name-a",
                "x",
                "--name-b",
                "y",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == f"{report['n_images']} images; A = x, B = y; AURC % (risk = 1 - mean Dice, lower is better)"
    )
    aurc = out[2].split()
    assert aurc[-3:] == [f"{100 * report['aurc_dice']:.3f}"] * 2 + ["+0.000"]  # the same run twice
    assert [line.split()[4] for line in out[4:]] == [f"{row['requested']:.2f}" for row in report["coverages"]]


def test_compare_figure_names_the_runs(nifti_run, tmp_path, monkeypatch):
    import selectivekit.plotting as plotting

    _root, folders, _ = nifti_run
    run_a = tmp_path / "a"
    assert main(evaluate_argv(folders, run_a, "--exact")) == 0
    figures = []
    original = plotting.plot_per_image_comparison

    def spy(*args, **kwargs):
        figures.append(original(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plotting, "plot_per_image_comparison", spy)
    out = tmp_path / "cmp"
    assert (
        main(["compare", str(run_a), str(run_a), "--out", str(out), "--name-a", "base", "--name-b", "ours"])
        == 0
    )
    (fig,) = figures
    assert fig.axes[-1].get_xlabel() == "coverage difference (ours − base)"
    assert "ours − base" in fig.get_suptitle()


def test_compare_errors(nifti_run, tmp_path):
    _root, folders, _ = nifti_run
    run_a = tmp_path / "a"
    assert main(evaluate_argv(folders, run_a, "--exact")) == 0
    missing = tmp_path / "missing"
    code, err = run_cli(["compare", str(run_a), str(missing), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "`RUN_B` must be an output folder of `selectivekit evaluate`" in err
    # different images
    other = tmp_path / "other"
    other.mkdir()
    report = read_report(run_a)
    report["per_image"] = report["per_image"][1:]
    report["per_image"][0]["name"] = "extra"
    (other / "report.json").write_text(json.dumps(report))
    code, err = run_cli(["compare", str(run_a), str(other), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "only in RUN_A: case_00, case_01" in err
    assert "only in RUN_B: extra" in err
    assert not (tmp_path / "o").exists()
    # --out equal to an input
    code, err = run_cli(["compare", str(run_a), str(run_a), "--out", str(run_a)])
    assert code == 1
    assert "`--out` must differ from the input folder" in err


# --------------------------------------------------------------------------------------------------
# error paths: exit status and message, nothing written


@pytest.fixture
def small_folders(tmp_path):
    preds, labels, us = noisy_cases(3, [(5, 6, 4), (4, 6, 5)])
    return write_case_folders(tmp_path / "data", preds, labels, us), tmp_path


def _assert_failed(code: int, err: str, out: Path, *expected: str, status: int = 1) -> None:
    assert code == status, err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert err.count("\n") == 1  # one line
    assert not out.exists()
    _no_leftovers(out.parent)


def test_error_unmatched_files_are_listed(small_folders):
    folders, tmp = small_folders
    save_nifti(folders["label"] / "lonely.nii.gz", np.zeros((2, 2, 2), np.uint8))
    (folders["unc"] / "case_01_unc.nii.gz").unlink()
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(
        code,
        err,
        out,
        "files without a partner",
        "in `--pred`: case_01_pred.nii.gz",
        "in `--label`: case_01.nii.gz, lonely.nii.gz",
    )


def test_error_shape_mismatch_names_both_files(small_folders):
    folders, tmp = small_folders
    save_nifti(folders["unc"] / "case_01_unc.nii.gz", np.zeros((4, 5, 6), np.float32))
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(
        code,
        err,
        out,
        "shape mismatch in case 'case_01'",
        "`--uncertainty` file 'case_01_unc.nii.gz' has shape (4, 5, 6)",
        "`--label` file 'case_01.nii.gz' has (4, 6, 5)",
    )
    save_nifti(folders["unc"] / "case_01_unc.nii.gz", np.zeros((4, 6, 5), np.float32))
    save_nifti(folders["pred"] / "case_00_pred.nii.gz", np.zeros((5, 6, 3), np.uint8))
    code, err = run_cli(evaluate_argv(folders, out, "--exact"))
    _assert_failed(
        code, err, out, "`--pred` file 'case_00_pred.nii.gz' has shape (5, 6, 3)", "'case_00.nii.gz'"
    )


def test_error_labels_outside_the_map_or_range(small_folders):
    folders, tmp = small_folders
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out, "--label-map", "1:1,2:2,7:1"))
    assert code == 0, err  # every stored value 0, 1, 2 is in the map (0 implied)
    out2 = tmp / "out2"
    code, err = run_cli(evaluate_argv(folders, out2, "--label-map", "1:1"))
    _assert_failed(code, err, out2, "holds values outside `--label-map`: 2", "case_00")
    code, err = run_cli(evaluate_argv(folders, out2, "--num-classes", "2"))
    _assert_failed(
        code,
        err,
        out2,
        "holds labels outside [0, 2) for --num-classes 2: 2 (the largest is 2); if 2 is a class, pass "
        "--num-classes 3",
    )


def test_error_nan_in_uncertainty(small_folders):
    folders, tmp = small_folders
    u = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    u[1, 2, 3] = np.nan
    save_nifti(folders["unc"] / "case_01_unc.nii.gz", u)
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(
        code, err, out, "`--uncertainty` file 'case_01_unc.nii.gz' must be finite, got 1 NaN value(s) of 120"
    )


def test_error_unreadable_file_and_bad_probabilities(small_folders):
    folders, tmp = small_folders
    (folders["unc"] / "case_00_unc.nii.gz").write_bytes(b"not a nifti")
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(code, err, out, "cannot read 'case_00_unc.nii.gz' as .nii.gz")
    probs = tmp / "probs"
    probs.mkdir()
    for i, shape in enumerate([(5, 6, 4), (4, 6, 5)]):
        np.save(probs / f"case_{i:02d}_probs.npy", np.full((K, *shape), 0.5))  # sums to 1.5
    args = ["evaluate", "--label", str(folders["label"]), "--probs", str(probs), "--num-classes", str(K)]
    code, err = run_cli([*args, "--out", str(out), "--quiet"])
    _assert_failed(code, err, out, "`--probs` file 'case_00_probs.npy' must sum to 1 along the class axis 0")


def test_error_out_folder_with_other_files_is_kept(small_folders):
    folders, tmp = small_folders
    out = tmp / "occupied"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, err = run_cli(evaluate_argv(folders, out))
    assert code == 1
    assert "`--out` folder" in err and "holds 'mine.txt', which selectivekit did not write" in err
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--coverages", "0.9,1.5"], "`--coverages` must be in (0, 1], got 1.5"),
        (["--coverages", "0.9,abc"], "`--coverages` must be comma-separated numbers"),
        (["--label-map", "500-1"], "`--label-map` entries must look like 500:1"),
        (["--num-classes", "0"], "`--num-classes` must be an integer >= 1"),
        (["--channel-axis", "0"], "`--channel-axis` applies to `--probs` only"),
        (["--probs", "x"], "not allowed with argument --uncertainty"),
    ],
)
def test_usage_errors_exit_2(small_folders, extra, message):
    folders, tmp = small_folders
    out = tmp / "out"
    code, err = run_cli([*evaluate_argv(folders, out), *extra])
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_usage_missing_command_and_help(capsys):
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    for command in ("evaluate", "calibrate"):
        assert main([command, "--help"]) == 0
        # every option is explained, --num-classes included
        text = " ".join(capsys.readouterr().out.split())
        assert "--num-classes K number of classes, background included: the labels are 0..K-1" in text
    code, err = run_cli(["evaluate", "--label", "x", "--uncertainty", "y", "--num-classes", "3"])
    assert code == 2
    assert "`--pred` is required with `--uncertainty`" in err


def test_python_m_selectivekit_entry_point(small_folders):
    folders, tmp = small_folders
    out = tmp / "via-subprocess"
    result = subprocess.run(
        [sys.executable, "-m", "selectivekit", *evaluate_argv(folders, out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert read_report(out)["n_images"] == 2
    failed = subprocess.run(
        [sys.executable, "-m", "selectivekit", *evaluate_argv(folders, tmp / "bad", "--num-classes", "2")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert "holds labels outside [0, 2)" in failed.stderr


@pytest.mark.parametrize(
    ("exception", "status", "message"),
    [
        (KeyboardInterrupt(), 130, "interrupted; nothing was written"),
        (RuntimeError("boom"), 1, "internal error (RuntimeError: boom); please report it"),
    ],
)
def test_interrupt_and_unexpected_errors_write_nothing(
    small_folders, monkeypatch, exception, status, message
):
    from selectivekit.cli import _reading as reading

    folders, tmp = small_folders
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exception
        return original(*args, **kwargs)

    original = reading.read_case
    monkeypatch.setattr(reading, "read_case", fail_on_second)
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(code, err, out, message, status=status)


def test_report_folder_has_ordinary_permissions(small_folders):
    import os
    import stat

    folders, tmp = small_folders
    out = tmp / "perm"
    assert main(evaluate_argv(folders, out)) == 0
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_missing_optional_dependency_is_named(small_folders, monkeypatch):
    folders, tmp = small_folders
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails as if it were not installed
    out = tmp / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    _assert_failed(code, err, out, "needs the package 'tqdm'", "pip install 'selectivekit[io,plot]'")


# --- integers beyond 2**53: the default run equals --exact --------------------------------------------------


@pytest.mark.parametrize("offset", [2**53, 2**62])
def test_cli_big_int64_default_run_equals_exact(tmp_path, offset):
    rng = np.random.default_rng(5)
    preds = [rng.integers(0, 3, (6, 7)) for _ in range(3)]
    labels = [rng.integers(0, 3, (6, 7)) for _ in range(3)]
    us = [offset + rng.integers(0, 200, (6, 7)) for _ in range(3)]
    folders = npy_case_folders(tmp_path, preds, labels, us)
    assert run_cli(evaluate_argv(folders, tmp_path / "default"))[0] == 0
    assert run_cli(evaluate_argv(folders, tmp_path / "exact", "--exact"))[0] == 0
    default, exact = read_report(tmp_path / "default"), read_report(tmp_path / "exact")
    ranks = np.unique(np.concatenate([u.ravel() for u in us]), return_inverse=True)[1]
    ranks = np.split(ranks.astype(np.float64), np.cumsum([u.size for u in us])[:-1])
    ranks = [r.reshape(u.shape) for r, u in zip(ranks, us, strict=True)]
    want = sk.aurc_dice(preds, labels, ranks, num_classes=3)
    assert default["path"] == "exact"
    assert default["aurc_dice"] == pytest.approx(want, rel=1e-12)
    assert exact["aurc_dice"] == pytest.approx(want, rel=1e-12)


# --- classes in no file: warned about; Dice per class in every report ---------------------------------------


def _dice_per_class(preds, labels, classes) -> np.ndarray:
    """Dice of each class in each image at coverage 1, from scratch (1.0 where absent from both)."""
    out = np.empty((len(preds), len(classes)))
    for i, (p, t) in enumerate(zip(preds, labels, strict=True)):
        for j, k in enumerate(classes):
            tp = int(np.sum((p == k) & (t == k)))
            den = int(np.sum(p == k)) + int(np.sum(t == k))
            out[i, j] = 1.0 if den == 0 else 2 * tp / den
    return out


@pytest.mark.parametrize("mode", ["default", "exact", "grid", "merge"])
@pytest.mark.parametrize(("num_classes", "background"), [(5, False), (3, False), (4, True)])
def test_per_class_dice_and_absent_classes(tmp_path, mode, num_classes, background):
    rng = np.random.default_rng(21)
    labels = [rng.integers(0, 3, (6, 8)) for _ in range(4)]  # classes 0-2 only
    preds = [np.where(rng.random(t.shape) < 0.75, t, rng.integers(0, 3, t.shape)) for t in labels]
    us = [rng.random(t.shape).astype(np.float32) for t in labels]
    folders = npy_case_folders(tmp_path / "data", preds, labels, us)
    out = tmp_path / "out"
    args = evaluate_argv(folders, out, "--coverages", "0.8")
    args[args.index("--num-classes") + 1] = str(num_classes)
    args += ["--include-background"] if background else []
    if mode in ("exact", "grid"):
        args += ["--exact"] if mode == "exact" else ["--max-memory", "0"]
    if mode == "merge":
        states = [str(tmp_path / f"s{i}.npz") for i in range(2)]
        for i, state in enumerate(states):
            shard_args = [a if a != str(out) else str(tmp_path / "unused") for a in args]
            assert run_cli([*shard_args, "--shard", f"{i}/2", "--save-state", state])[0] == 0
        code, err = run_cli(["merge", *states, "--out", str(out)])
    else:
        code, err = run_cli(args)
    assert code == 0, err
    report = read_report(out)
    classes = list(range(0 if background else 1, num_classes))
    absent = [k for k in classes if k > 2]
    assert report["absent_classes"] == absent
    warnings_ = [line for line in err.splitlines() if "warning" in line]
    if absent:
        assert (
            len(warnings_) == 1 and "occur" in warnings_[0] and f"--num-classes {num_classes}" in warnings_[0]
        )
    else:
        assert warnings_ == []
    want = _dice_per_class(preds, labels, classes)
    assert [row["class"] for row in report["per_class"]] == classes
    for j, row in enumerate(report["per_class"]):
        k = classes[j]
        assert row["dice_full"] == pytest.approx(want[:, j].mean(), rel=1e-12)
        assert row["labelled_voxels"] == sum(int(np.sum(t == k)) for t in labels)
        assert row["predicted_voxels"] == sum(int(np.sum(p == k)) for p in preds)
        assert [c["requested"] for c in row["coverages"]] == [0.8]
    # the mean Dice is the mean of the class means (every image has every class column)
    assert report["dice_full"]["mean"] == pytest.approx(want.mean(), rel=1e-12)
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Dice per class" in markdown and "Dice per class" in html
    from selectivekit.report import percent

    for row in report["per_class"]:
        cells = [row["class"], f"{row['labelled_voxels']:,}", f"{row['predicted_voxels']:,}"]
        cells += [percent(row["dice_full"]), percent(row["coverages"][0]["dice"])]
        assert "| " + " | ".join(map(str, cells)) + " |" in markdown
    assert ("**Warning:**" in markdown) == bool(absent) and ("Warning" in html) == bool(absent)
