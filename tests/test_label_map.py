"""Label maps for one side only: ``--label-map-labels`` / ``--label-map-pred`` (and ``label_map_labels`` /
``label_map_pred`` of ``selectivekit.io.load_case``), the 0/255 mask with 0/1 predictions, end to end on
tiny files. The reports are compared with the library called on the arrays mapped by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selectivekit import io as skio
from selectivekit.segmentation import aurc_dice, dice_at_coverage
from tests.conftest import evaluate_argv, run_cli

COVERAGES = [0.95, 0.9, 0.8, 0.7]


def _masks(seed: int = 0, n: int = 3):
    """Binary (pred, label, u) per image: about 10% wrong voxels, more uncertain than the right ones."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (14 + i, 12)
        label = (rng.random(shape) < 0.35).astype(np.uint8)
        wrong = rng.random(shape) < 0.1
        pred = np.where(wrong, 1 - label, label).astype(np.uint8)
        u = (rng.random(shape) + 0.7 * wrong).astype(np.float32)
        out.append((pred, label, u))
    return out


def _write(root: Path, images, *, label_scale: int, pred_scale: int) -> dict[str, Path]:
    """PNG masks (labels and predictions stored as 0/``scale``) and float32 TIFF uncertainty."""
    folders = {name: root / name for name in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for i, (pred, label, u) in enumerate(images):
        Image.fromarray((pred * pred_scale).astype(np.uint8)).save(folders["pred"] / f"img{i}_pred.png")
        Image.fromarray((label * label_scale).astype(np.uint8)).save(folders["label"] / f"img{i}_gt.png")
        Image.fromarray(u).save(folders["unc"] / f"img{i}_unc.tif")
    return folders


def _args(folders: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return evaluate_argv(folders, out, "--exact", *extra, num_classes=2)


def _check_report(out: Path, images) -> dict:
    report = json.loads((out / "report.json").read_text())
    preds, labels, us = ([im[j] for im in images] for j in range(3))
    expected = dice_at_coverage(preds, labels, us, COVERAGES, num_classes=2)
    assert report["aurc_dice"] == pytest.approx(aurc_dice(preds, labels, us, num_classes=2), rel=1e-12)
    for row, result in zip(report["coverages"], expected, strict=True):
        assert row["mean"] == pytest.approx(result.mean, rel=1e-12)
        assert row["coverage"] == pytest.approx(result.coverage, rel=1e-12)
    return report


@pytest.mark.parametrize(
    ("label_scale", "pred_scale", "option"),
    [(255, 1, "--label-map-labels"), (1, 255, "--label-map-pred")],
    ids=["labels-0-255", "pred-0-255"],
)
def test_one_sided_map_evaluates_mixed_encodings(tmp_path, label_scale, pred_scale, option):
    images = _masks()
    folders = _write(tmp_path, images, label_scale=label_scale, pred_scale=pred_scale)
    out = tmp_path / "out"
    code, err = run_cli(_args(folders, out, option, "255:1"))
    assert code == 0, err
    report = _check_report(out, images)
    side = "label_map_labels" if option == "--label-map-labels" else "label_map_pred"
    other = "label_map_pred" if side == "label_map_labels" else "label_map_labels"
    assert report["settings"][side] == {"255": 1}
    assert report["settings"][other] is None and report["settings"]["label_map"] is None


def test_both_sides_with_their_own_maps(tmp_path):
    images = _masks(1)
    folders = _write(tmp_path, images, label_scale=255, pred_scale=128)
    out = tmp_path / "out"
    code, err = run_cli(_args(folders, out, "--label-map-labels", "255:1", "--label-map-pred", "128:1"))
    assert code == 0, err
    _check_report(out, images)


def test_the_shared_map_on_mixed_encodings_fails_with_a_hint(tmp_path):
    folders = _write(tmp_path, _masks(), label_scale=255, pred_scale=1)
    out = tmp_path / "out"
    code, err = run_cli(_args(folders, out, "--label-map", "255:1"))
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert "`--pred` file 'img0_pred.png' holds values outside `--label-map`: 1 (the map has 0, 255)" in err
    assert "`--label-map-labels` or `--label-map-pred`" in err
    assert not out.exists()


def test_no_map_on_a_0_255_mask_names_the_one_sided_options(tmp_path):
    folders = _write(tmp_path, _masks(), label_scale=255, pred_scale=1)
    code, err = run_cli(_args(folders, tmp_path / "out"))
    assert code == 1, err
    assert "holds labels outside [0, 2)" in err and "255" in err and "`--label-map-labels`" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-map", "255:1", "--label-map-labels", "255:1"], "give either `--label-map`"),
        (["--label-map", "255:1", "--label-map-pred", "255:1"], "give either `--label-map`"),
        (["--label-map-labels", "255-1"], "`--label-map-labels` entries must look like 500:1"),
        (["--label-map-pred", "1:1,1:0"], "`--label-map-pred` maps the value 1 twice"),
    ],
)
def test_usage_errors(tmp_path, extra, message):
    folders = _write(tmp_path, _masks(), label_scale=255, pred_scale=1)
    out = tmp_path / "out"
    code, err = run_cli(_args(folders, out, *extra))
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_pred_map_needs_pred_files(tmp_path):
    (tmp_path / "label").mkdir()
    (tmp_path / "probs").mkdir()
    np.save(tmp_path / "label" / "c0.npy", np.zeros((4, 4), np.uint8))
    np.save(tmp_path / "probs" / "c0.npy", np.full((2, 4, 4), 0.5))
    argv = ["evaluate", "--label", str(tmp_path / "label"), "--probs", str(tmp_path / "probs")]
    argv += ["--num-classes", "2", "--quiet", "--out", str(tmp_path / "out"), "--label-map-pred", "255:1"]
    code, err = run_cli(argv)
    assert code == 2 and "`--label-map-pred` applies to `--pred` files" in err, err


def test_calibrate_takes_the_one_sided_maps(tmp_path):
    pytest.importorskip("scipy")
    folders = _write(tmp_path, _masks(2, n=4), label_scale=255, pred_scale=1)
    out = tmp_path / "threshold.json"
    argv = ["calibrate", "--pred", str(folders["pred"]), "--label", str(folders["label"])]
    argv += ["--uncertainty", str(folders["unc"]), "--num-classes", "2", "--max-dice-loss", "0.2"]
    code, err = run_cli([*argv, "--quiet", "--out", str(out), "--label-map-labels", "255:1"])
    assert code == 0, err
    assert json.loads(out.read_text())["settings"]["label_map_labels"] == {"255": 1}


# ------------------------------------------------------------------------------------------------------
# the library: selectivekit.io.load_case


@pytest.fixture
def case(tmp_path):
    label = np.array([[0, 255], [255, 0]], np.uint8)
    pred = np.array([[0, 1], [0, 0]], np.uint8)
    np.save(tmp_path / "c_gt.npy", label)
    np.save(tmp_path / "c_pred.npy", pred)
    np.save(tmp_path / "c_unc.npy", np.zeros((2, 2), np.float32))
    files = {
        "label": tmp_path / "c_gt.npy",
        "pred": tmp_path / "c_pred.npy",
        "uncertainty": tmp_path / "c_unc.npy",
    }
    return skio.Case("c", files)


def test_load_case_maps_one_side_only(case):
    pred, label, _ = skio.load_case(case, num_classes=2, label_map_labels={255: 1})
    np.testing.assert_array_equal(label, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(pred, [[0, 1], [0, 0]])  # read as stored
    with pytest.raises(
        ValueError, match=r"`pred` file 'c_pred.npy' holds values outside `label_map_pred`: 1"
    ):
        skio.load_case(case, num_classes=2, label_map_labels={255: 1}, label_map_pred={255: 1})
    with pytest.raises(ValueError, match=r"holds values outside `label_map`: 1 .*`label_map_labels`"):
        skio.load_case(case, num_classes=2, label_map={255: 1})
    with pytest.raises(ValueError, match=r"give either `label_map`"):
        skio.load_case(case, num_classes=2, label_map={255: 1}, label_map_labels={255: 1})
