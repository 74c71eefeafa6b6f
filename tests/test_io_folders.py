"""Evaluation folders as nnU-Net v2 and MONAI write them, written here by those packages' own writers.

nnU-Net's folders come from ``nnunetv2.inference.export_prediction.export_prediction_from_logits`` (the
function ``nnUNetv2_predict`` and the trainer's validation call for every case) with a real
``PlansManager``; the marker files are the ones ``nnUNetv2_predict`` saves beside the cases
(``predict_from_raw_data_args.json``, ``dataset.json``, ``plans.json``), written with the same
``save_json``. MONAI's come from
``monai.transforms.SaveImage``. Every report is compared with ``selectivekit.segmentation`` called on the
arrays the test made, in the axis order of the labels, so a wrong axis order gives a failure, not a number.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from selectivekit import io as skio
from selectivekit import max_softmax_uncertainty
from selectivekit.cli import main
from selectivekit.segmentation import aurc_dice, dice_at_coverage

K = 3
COVERAGES = [0.9, 0.7]


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


#: The affine SimpleITK writes for origin 0, spacing 1 and the identity direction (LPS, in NIfTI's RAS):
#: nnU-Net copies the geometry of its input, so labels beside its predictions have this one.
ITK_IDENTITY = np.diag([-1.0, -1.0, 1.0, 1.0])


def _expected(preds, labels, us) -> dict[str, float]:
    """AURC and the mean Dice at each coverage, from the arrays directly (exact in-memory functions)."""
    results = dice_at_coverage(preds, labels, us, COVERAGES, num_classes=K)
    out = {"aurc_dice": aurc_dice(preds, labels, us, num_classes=K)}
    out.update({f"mean@{c}": r.mean for c, r in zip(COVERAGES, results, strict=True)})
    return out


def _evaluate(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / name
    argv = ["evaluate", *args, "--num-classes", str(K), "--coverages", ",".join(map(str, COVERAGES))]
    assert main([*argv, "--exact", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    got = {"aurc_dice": report["aurc_dice"]}
    got.update({f"mean@{c}": row["mean"] for c, row in zip(COVERAGES, report["coverages"], strict=True)})
    report["numbers"] = got
    return report


# --------------------------------------------------------------------------------------------------
# nnU-Net v2


def _nnunet_writer(reader_writer: str, file_ending: str, ndim: int):
    """nnU-Net's export function with a minimal but real plans/dataset pair (no resampling: the shapes
    and spacings already match)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    spacing = [1.0] * ndim
    plans = {
        "dataset_name": "Dataset001_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [6, 6, 6],
        "image_reader_writer": reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "cfg": {
                "data_identifier": "cfg",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [6] * ndim,
                "median_image_size_in_voxels": [6] * ndim,
                "spacing": spacing,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
                "resampling_fn_probabilities_kwargs": resampling,
                "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []},
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 4,
        "file_ending": file_ending,
    }
    manager = PlansManager(plans)
    configuration = manager.get_configuration("cfg")

    def write(folder: Path, name: str, logits: np.ndarray) -> None:
        """``logits`` in nnU-Net's internal order (c, *shape): (c, z, y, x) for SimpleITK, (c, 1, H, W) 2D."""
        import torch

        shape = logits.shape[1:]
        properties = {
            "spacing": [1.0, 1.0, 1.0],
            "shape_after_cropping_and_before_resampling": shape,
            "shape_before_cropping": shape,
            "bbox_used_for_cropping": [[0, s] for s in shape],
            "sitk_stuff": {
                "spacing": (1.0,) * 3,
                "origin": (0.0,) * 3,
                "direction": tuple(np.eye(3).ravel()),
            },
        }
        folder.mkdir(parents=True, exist_ok=True)
        export_prediction_from_logits(
            torch.from_numpy(logits.astype(np.float32)),
            properties,
            configuration,
            manager,
            dataset,
            str(folder / name),
            save_probabilities=True,
            num_threads_torch=1,
        )

    def markers(folder: Path, *, predict_args: bool = True) -> None:
        from batchgenerators.utilities.file_and_folder_operations import save_json

        if predict_args:  # nnUNetPredictor.predict_from_files writes these three beside the cases
            save_json({"save_probabilities": True}, str(folder / "predict_from_raw_data_args.json"))
        save_json(dataset, str(folder / "dataset.json"), sort_keys=False)
        save_json(plans, str(folder / "plans.json"), sort_keys=False)

    return write, markers


def _cases_3d(rng: np.random.Generator, n: int, shape_zyx: tuple[int, int, int]):
    """nnU-Net-order logits, and the labels in nibabel's (x, y, z) order: the arg-max with ~20% changed."""
    logits, labels = [], []
    for _ in range(n):
        lg = rng.normal(size=(K, *shape_zyx)) * 2
        argmax_xyz = lg.argmax(0).transpose(2, 1, 0)
        flip = rng.random(argmax_xyz.shape) < 0.2
        labels.append(np.where(flip, (argmax_xyz + 1) % K, argmax_xyz).astype(np.uint8))
        logits.append(lg)
    return logits, labels


def _reference_3d(folder: Path, names):
    """The arrays as nnU-Net wrote them, put in the labels' (x, y, z) order by hand."""
    preds, us = [], []
    for name in names:
        preds.append(np.asanyarray(nibabel.load(folder / f"{name}.nii.gz").dataobj))
        probs = np.load(folder / f"{name}.npz")["probabilities"].transpose(0, 3, 2, 1)
        us.append(max_softmax_uncertainty(probs, axis=0))
    return preds, us


def test_nnunet_predict_folder_cubic_volume_gets_the_axis_order_right(tmp_path):
    write, markers = _nnunet_writer("SimpleITKIO", ".nii.gz", 3)
    rng = np.random.default_rng(0)
    logits, labels = _cases_3d(rng, 3, (5, 5, 5))  # cubic: shapes cannot tell a wrong axis order
    out, label_dir = tmp_path / "predicted", tmp_path / "labelsTs"
    label_dir.mkdir()
    names = [f"case_{i:03d}" for i in range(3)]
    for name, lg, label in zip(names, logits, labels, strict=True):
        write(out, name, lg)
        _nifti(label_dir / f"{name}.nii.gz", label, ITK_IDENTITY)
    markers(out)
    assert sorted(p.name for p in out.iterdir())[:4] == [
        "case_000.nii.gz",
        "case_000.npz",
        "case_000.pkl",
        "case_001.nii.gz",
    ]
    assert skio.folder_layout(out) == "nnunet"
    preds, us = _reference_3d(out, names)
    expected = _expected(preds, labels, us)
    # nnU-Net's segmentation is the arg-max of its probabilities: in (x, y, z) both agree
    for pred, name in zip(preds, names, strict=True):
        probs = np.load(out / f"{name}.npz")["probabilities"].transpose(0, 3, 2, 1)
        np.testing.assert_array_equal(pred, probs.argmax(0))

    common = ["--pred", str(out), "--probs", str(out), "--label", str(label_dir)]
    report = _evaluate(tmp_path, "auto", *common)
    assert report["numbers"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert report["settings"]["layouts"]["--probs"] == "nnunet"
    assert report["settings"]["reverse_axes"] is None
    # the explicit flags override: --reverse-axes gives the same, --no-reverse-axes the (x, y, z)-misread maps
    assert _evaluate(tmp_path, "on", *common, "--reverse-axes")["numbers"] == report["numbers"]
    wrong_us = [max_softmax_uncertainty(np.load(out / f"{n}.npz")["probabilities"], axis=0) for n in names]
    wrong = _evaluate(tmp_path, "off", *common, "--no-reverse-axes")
    assert wrong["numbers"] == pytest.approx(_expected(preds, labels, wrong_us), rel=1e-12, abs=1e-15)
    assert wrong["numbers"]["aurc_dice"] != pytest.approx(expected["aurc_dice"], rel=1e-3)

    # --probs alone on the same folder: the .npz files are taken (the prediction is their arg-max)
    alone = _evaluate(tmp_path, "alone", "--probs", str(out), "--label", str(label_dir))
    assert alone["numbers"] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_nnunet_non_cubic_volume_and_library_call(tmp_path):
    write, markers = _nnunet_writer("SimpleITKIO", ".nii.gz", 3)
    rng = np.random.default_rng(1)
    logits, labels = _cases_3d(rng, 2, (6, 5, 4))
    out, label_dir = tmp_path / "predicted", tmp_path / "labels"
    label_dir.mkdir()
    names = ["a", "b"]
    for name, lg, label in zip(names, logits, labels, strict=True):
        write(out, name, lg)
        _nifti(label_dir / f"{name}.nii.gz", label)
    markers(out, predict_args=False)  # plans.json + dataset.json are enough
    cases = skio.pair_files({"label": label_dir, "probs": out}, array_roles=("probs",))
    assert [c.files["probs"].name for c in cases] == ["a.npz", "b.npz"]
    preds, us = _reference_3d(out, names)
    for case, pred, u in zip(cases, preds, us, strict=True):
        got_pred, _, got_u = skio.load_case(case, num_classes=K, uncertainty=None, probs="probs", pred=None)
        np.testing.assert_array_equal(got_pred, pred)
        np.testing.assert_array_equal(got_u, u)
    # the same files outside an nnU-Net folder: nothing is reversed, and the mismatch is explained
    plain = skio.Case(cases[0].name, cases[0].files)
    with pytest.raises(ValueError, match="look reversed"):
        skio.load_case(plain, num_classes=K, uncertainty=None, probs="probs", pred=None)


def test_nnunet_2d_png_folder_drops_the_singleton_axis(tmp_path):
    pytest.importorskip("skimage")  # nnU-Net's NaturalImage2DIO writes with scikit-image
    from PIL import Image

    write, markers = _nnunet_writer("NaturalImage2DIO", ".png", 2)
    rng = np.random.default_rng(2)
    out, label_dir = tmp_path / "predicted", tmp_path / "labels"
    label_dir.mkdir()
    preds, labels, us = [], [], []
    for i in range(3):
        lg = rng.normal(size=(K, 1, 7, 7)) * 2  # nnU-Net's 2D order (c, 1, H, W); square: H == W
        write(out, f"img_{i}", lg)
        argmax = lg[:, 0].argmax(0)
        label = np.where(rng.random(argmax.shape) < 0.2, (argmax + 1) % K, argmax).astype(np.uint8)
        Image.fromarray(label).save(label_dir / f"img_{i}.png")
        probs = np.load(out / f"img_{i}.npz")["probabilities"]
        assert probs.shape == (K, 1, 7, 7)
        preds.append(np.asarray(Image.open(out / f"img_{i}.png")))
        labels.append(label)
        us.append(max_softmax_uncertainty(probs[:, 0], axis=0))  # (H, W), as Pillow reads the PNGs
    markers(out)
    report = _evaluate(tmp_path, "png", "--pred", str(out), "--probs", str(out), "--label", str(label_dir))
    assert report["numbers"] == pytest.approx(_expected(preds, labels, us), rel=1e-12, abs=1e-15)


def test_nnunet_fold_validation_folder_against_full_labels_tr(tmp_path):
    write, markers = _nnunet_writer("SimpleITKIO", ".nii.gz", 3)
    rng = np.random.default_rng(3)
    logits, labels = _cases_3d(rng, 5, (4, 5, 6))
    trainer = tmp_path / "nnUNet_results" / "Dataset001_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    validation = trainer / "fold_0" / "validation"
    labels_tr = tmp_path / "labelsTr"
    labels_tr.mkdir()
    names = [f"case_{i}" for i in range(5)]
    for name, label in zip(names, labels, strict=True):
        _nifti(labels_tr / f"{name}.nii.gz", label, ITK_IDENTITY)
    held_out = [1, 3]  # the fold's validation cases
    for i in held_out:
        write(validation, names[i], logits[i])
    (validation / "summary.json").write_text("{}")
    markers(trainer, predict_args=False)  # the trainer saves plans.json and dataset.json beside the folds
    assert skio.folder_layout(validation) == "nnunet"
    common = ["--pred", str(validation), "--probs", str(validation), "--label", str(labels_tr)]
    out = tmp_path / "refused"
    assert main(["evaluate", *common, "--num-classes", str(K), "--quiet", "--out", str(out)]) == 1
    assert not out.exists()
    report = _evaluate(tmp_path, "fold0", *common, "--cases", "predicted")
    assert [row["name"] for row in report["per_image"]] == ["case_1", "case_3"]
    preds, us = _reference_3d(validation, [names[i] for i in held_out])
    expected = _expected(preds, [labels[i] for i in held_out], us)
    assert report["numbers"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert report["settings"]["cases"] == "predicted"


def test_cases_predicted_still_requires_a_label_for_every_prediction(tmp_path):
    pred, label = tmp_path / "pred", tmp_path / "label"
    pred.mkdir()
    label.mkdir()
    for name in ("a", "b"):
        np.save(pred / f"{name}.npy", np.zeros((2, 2), np.uint8))
    np.save(label / "a.npy", np.zeros((2, 2), np.uint8))
    np.save(label / "z.npy", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"the `label` folder '[^']*label' lacks b; .*in `pred`: b.npy\. "):
        skio.pair_files({"pred": pred, "label": label}, partial_roles=("label",))
    (pred / "b.npy").unlink()
    cases = skio.pair_files({"pred": pred, "label": label}, partial_roles=("label",))
    assert [c.name for c in cases] == ["a"]
    with pytest.raises(ValueError, match=r"`partial_roles` must leave at least one"):
        skio.pair_files({"label": label}, partial_roles=("label",))


def test_folder_layout_markers(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    np.save(plain / "a.npy", np.zeros(2))
    (plain / "plans.json").write_text("{}")  # plans.json alone is not nnU-Net's marker
    assert skio.folder_layout(plain) == "files"
    (plain / "dataset.json").write_text("{}")
    assert skio.folder_layout(plain) == "nnunet"
    validation = tmp_path / "trainer" / "fold_2" / "validation"
    validation.mkdir(parents=True)
    assert skio.folder_layout(validation) == "files"  # no plans two levels up
    with pytest.raises(NotADirectoryError, match="`folder` must be an existing folder"):
        skio.folder_layout(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# MONAI


def _monai_save(folder: Path, name: str, array: np.ndarray, postfix: str | None) -> None:
    """MONAI's SaveImage on a channel-first array named after an input file ``name.nii.gz``."""
    pytest.importorskip("monai")
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    image = MetaTensor(torch.from_numpy(array), meta={"filename_or_obj": f"/data/{name}.nii.gz"})
    kwargs = {} if postfix is None else {"output_postfix": postfix}
    SaveImage(output_dir=str(folder), print_log=False, **kwargs)(image)


@pytest.mark.parametrize("shared", [False, True], ids=["two-folders", "one-folder"])
def test_monai_save_image_layout(tmp_path, shared):
    rng = np.random.default_rng(4)
    seg_dir = tmp_path / "monai_out"
    prob_dir = seg_dir if shared else tmp_path / "monai_probs"
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    preds, labels, us = [], [], []
    for i in range(3):
        name = f"patient_{i}"
        probs = _softmax(rng.normal(size=(K, K, K, K)) * 2, axis=0).astype(np.float32)  # cubic, side K
        pred = probs.argmax(0).astype(np.uint8)
        label = np.where(rng.random(pred.shape) < 0.2, (pred + 1) % K, pred).astype(np.uint8)
        _monai_save(seg_dir, name, pred[None], "seg")
        _monai_save(prob_dir, name, probs, "prob" if shared else None)  # default postfix: _trans
        _nifti(label_dir / f"{name}.nii.gz", label)
        preds.append(pred)
        labels.append(label)
        us.append(max_softmax_uncertainty(probs, axis=0))
    written = sorted(str(p.relative_to(prob_dir)) for p in prob_dir.rglob("*.nii.gz"))
    assert ("patient_0/patient_0_prob.nii.gz" if shared else "patient_0/patient_0_trans.nii.gz") in written
    assert skio.folder_layout(seg_dir) == "monai"
    # MONAI stores the channels last: (x, y, z, c); with every axis of size K only the layout can tell
    stored = nibabel.load(next(prob_dir.rglob("patient_0_*.nii.gz"))).shape
    assert stored == (K, K, K, K)
    report = _evaluate(
        tmp_path, "monai", "--pred", str(seg_dir), "--probs", str(prob_dir), "--label", str(label_dir)
    )
    assert [row["name"] for row in report["per_image"]] == ["patient_0", "patient_1", "patient_2"]
    assert report["numbers"] == pytest.approx(_expected(preds, labels, us), rel=1e-12, abs=1e-15)


def test_monai_flat_trans_suffix_and_ambiguous_subfolder(tmp_path):
    assert skio.case_name("case_001_trans.nii.gz") == "case_001"
    monai_dir = tmp_path / "out"
    (monai_dir / "c1").mkdir(parents=True)
    np.save(monai_dir / "c1" / "c1_a.npy", np.zeros(2))
    np.save(monai_dir / "c1" / "c1_b.npy", np.zeros(2))
    assert skio.folder_layout(monai_dir) == "monai"
    with pytest.raises(ValueError, match=r"two files for case 'c1': c1/c1_a.npy and c1/c1_b.npy"):
        skio.pair_files({"pred": monai_dir})


def test_probs_alone_prefer_the_array_file_in_any_folder(tmp_path):
    out, labels = tmp_path / "out", tmp_path / "labels"
    out.mkdir()
    labels.mkdir()
    _nifti(out / "c.nii.gz", np.zeros((2, 2, 2), np.uint8))
    np.savez(out / "c.npz", probabilities=np.full((K, 2, 2, 2), 1 / K))
    _nifti(labels / "c.nii.gz", np.zeros((2, 2, 2), np.uint8))
    cases = skio.pair_files({"label": labels, "probs": out}, array_roles=("probs",))
    assert cases[0].files["probs"].name == "c.npz"
    assert cases[0].layouts == {"label": "files", "probs": "files"}
    with pytest.raises(ValueError, match=r"two files for case 'c': c.nii.gz and c.npz"):
        skio.pair_files({"label": labels, "pred": out})  # not an array role: still ambiguous
    (out / "predict_from_raw_data_args.json").write_text("{}")  # now nnU-Net's folder: its segmentation
    assert skio.pair_files({"label": labels, "pred": out})[0].files["pred"].name == "c.nii.gz"
