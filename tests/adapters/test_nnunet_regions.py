"""nnU-Net's region training (BraTS-style overlapping regions) with selectivekit's trainer, and what it
predicts evaluated with ``selectivekit evaluate --regions``, on nnU-Net's own region configuration: a
dataset.json whose labels are regions, with ``regions_class_order``; nnU-Net's LabelManager,
``DC_and_BCE_loss``, region targets (``ConvertSegmentationToRegionsTransform``), preprocessing, data
loaders, training and validation steps and predictor. All in this process, on the CPU, in a few seconds (no
planning: the plans are written out)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.label_handling.label_handling import LabelManager  # noqa: E402

import selectivekit.adapters.nnunet as sknn  # noqa: E402
from selectivekit.adapters.torch import UncertaintyMarginLoss  # noqa: E402

#: nnU-Net's BraTS region configuration (its Dataset137 conversion: 1 oedema, 2 necrosis, 3 enhancing).
LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
DATASET_JSON = {
    "channel_names": {"0": "T1c"},
    "labels": LABELS,
    "regions_class_order": [1, 2, 3],
    "numTraining": 4,
    "file_ending": ".nii.gz",
}
REGION_LABELS = [(1, 2, 3), (2, 3), (3,)]


def brats_like(rng: np.random.Generator, size: int, ndim: int = 3, ignore: bool = False):
    """An image (1, *spatial) and its label map (1, *spatial): three nested spheres, oedema outside."""
    grid = np.mgrid[(slice(0, size),) * ndim]
    centre = rng.uniform(size / 2 - 2, size / 2 + 2, ndim)
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    label = np.zeros(d.shape, np.int16)
    for k, r in enumerate((0.38 * size, 0.25 * size, 0.14 * size), start=1):
        label[d < r] = k
    if ignore:
        label[:2] = 4  # two rows not annotated
    image = 0.6 * np.minimum(label, 3) + rng.normal(0, 0.3, d.shape)
    return image[None].astype(np.float32), label[None]


# --- the loss against nnU-Net's own, on nnU-Net's region targets ------------------------------------------

POOL = [[1, 1], [2, 2], [2, 2], [2, 2]]  # 4 stages -> 3 deep-supervision outputs
DS_WEIGHTS = (2 / 3, 1 / 3, 0.0)


def _stub(cls, *, ignore: bool):
    """A ``cls`` with only what ``_build_loss`` reads, for nnU-Net's region configuration."""
    labels = dict(LABELS, ignore=4) if ignore else LABELS
    trainer = object.__new__(cls)
    trainer.label_manager = LabelManager(labels, regions_class_order=[1, 2, 3])
    trainer.configuration_manager = SimpleNamespace(batch_dice=True, pool_op_kernel_sizes=POOL)
    trainer.enable_deep_supervision = True
    trainer.is_ddp = False
    trainer.device = torch.device("cpu")
    trainer.messages = []
    trainer.print_to_log_file = lambda *args, **kwargs: trainer.messages.append(" ".join(map(str, args)))
    return trainer


def _region_batch(trainer, *, ignore: bool, seed: int = 0):
    """Outputs at each deep-supervision scale and nnU-Net's region targets, made by nnU-Net's own
    validation transforms (regions, the ignore label as a last channel, downsampled per scale)."""
    rng = np.random.default_rng(seed)
    manager = trainer.label_manager
    transform = nnUNetTrainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(),
        foreground_labels=manager.foreground_labels,
        regions=manager.foreground_regions,
        ignore_label=manager.ignore_label,
    )
    items = []
    for _ in range(2):
        image, label = brats_like(rng, 16, ndim=2, ignore=ignore)
        items.append(transform(image=torch.from_numpy(image), segmentation=torch.from_numpy(label)))
    targets = [torch.stack([item["segmentation"][i] for item in items]) for i in range(len(DS_WEIGHTS))]
    g = torch.Generator().manual_seed(seed)
    outputs = [torch.randn(2, 3, *t.shape[2:], generator=g, requires_grad=True) for t in targets]
    return outputs, targets


@pytest.mark.parametrize("ignore", [False, True], ids=["regions", "regions-and-ignore-label"])
@pytest.mark.parametrize(
    "cls_name", ["nnUNetTrainerUncertaintyAware", "nnUNetTrainerUncertaintyAwareAllScales"]
)
def test_region_loss_is_nnunets_loss_plus_the_region_margin_loss(cls_name, ignore):
    cls = getattr(sknn, cls_name)

    class Weighted(cls):
        uncertainty_weight = 3.0

    trainer = _stub(Weighted, ignore=ignore)
    ours = trainer._build_loss()
    own = nnUNetTrainer._build_loss(_stub(nnUNetTrainer, ignore=ignore))  # DC_and_BCE_loss, by nnU-Net
    outputs, targets = _region_batch(trainer, ignore=ignore)
    assert targets[0].shape[1] == 3 + ignore  # the regions, then nnU-Net's ignore channel
    margin = UncertaintyMarginLoss(0.1, sigmoid=True)

    def margin_target(t):  # written out: the regions, -100 (the ignore index) where the voxel is ignored
        if not ignore:
            return t
        regions = t[:, :-1].long()
        return torch.where(t[:, -1:].bool(), torch.full_like(regions, -100), regions)

    loss = ours(outputs, targets)
    if cls.uncertainty_on_all_scales:
        unc = sum(
            w * margin(o, margin_target(t)) for w, o, t in zip(DS_WEIGHTS, outputs, targets, strict=True)
        )
    else:
        unc = margin(outputs[0], margin_target(targets[0]))
    expected = own(outputs, targets) + 3.0 * unc
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, outputs, allow_unused=True)
    for got, want, o in zip(grads, expected_grads, outputs, strict=True):
        zero = torch.zeros_like(o)
        torch.testing.assert_close(zero if got is None else got, zero if want is None else want)
    assert ours.unc_loss.sigmoid and ours.ignore_channel == ignore and bool(unc > 0)
    assert any("3 sigmoid regions ranked together" in m for m in trainer.messages)
    if ignore:  # the ignored rows take no part in any region
        changed = [o.detach().clone().requires_grad_(True) for o in outputs]
        with torch.no_grad():
            changed[0][:, :, :2] = 10 * torch.randn(2, 3, 2, 16)
        torch.testing.assert_close(
            ours.uncertainty_term(changed, targets), ours.uncertainty_term(outputs, targets)
        )


# --- nnU-Net itself: preprocess, train, validate, predict; then evaluate --regions ------------------------

ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities_kwargs": {
        "is_seg": False,
        "order": 1,
        "order_z": 0,
        "force_separate_z": None,
    },
}
SIZE = 16
PLANS = {  # what nnUNetv2_plan_and_preprocess writes, for 16^3 volumes and a 3-stage U-Net of 4-16 features
    "dataset_name": "Dataset502_BraTSLike",
    "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
    "original_median_shape_after_transp": [SIZE] * 3,
    "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2],
    "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {
        "0": {
            "max": 3.0,
            "mean": 1.0,
            "median": 1.0,
            "min": -1.0,
            "percentile_00_5": -1.0,
            "percentile_99_5": 3.0,
            "std": 1.0,
        }
    },
    "configurations": {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": [SIZE] * 3,
            "median_image_size_in_voxels": [float(SIZE)] * 3,
            "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            **RESAMPLING,
            "architecture": ARCHITECTURE,
            "batch_dice": True,
        }
    },
}


class _RegionTrainer(sknn.nnUNetTrainerUncertaintyAware):
    uncertainty_weight = 2.0
    uncertainty_warmup = 0.0  # the term from the first step
    uncertainty_ramp = 0.0
    schedule_epochs = 1


def test_region_training_and_evaluation_with_nnunets_region_configuration(tmp_path, monkeypatch):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from selectivekit import sigmoid_uncertainty_from_logits
    from selectivekit.cli import main
    from tests.conftest import read_report

    # nnU-Net reads its folders from the environment when first imported: set them in its trainer module
    monkeypatch.setattr(trainer_module, "nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setattr(trainer_module, "nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # augment in this process
    dataset = tmp_path / "preprocessed" / PLANS["dataset_name"]
    folder = dataset / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)

    # nnU-Net's own preprocessing (crop, normalise, foreground locations per region), 4 training cases
    plans = PlansManager(PLANS)
    configuration = plans.get_configuration("3d_fullres")
    rng = np.random.default_rng(0)
    names = [f"brats_{i:03d}" for i in range(4)]
    for name in names:
        image, label = brats_like(rng, SIZE)
        data, seg, properties = DefaultPreprocessor(verbose=False).run_case_npy(
            image, label, {"spacing": [1.0, 1.0, 1.0]}, plans, configuration, DATASET_JSON
        )
        nnUNetDatasetNumpy.save_case(data, seg, properties, str(folder / name))
    (dataset / "splits_final.json").write_text(json.dumps([{"train": names[:3], "val": names[3:]}]))

    # nnU-Net's trainer: its network, DC_and_BCE_loss with our term, its data loaders and steps
    trainer = _RegionTrainer(PLANS, "3d_fullres", 0, DATASET_JSON, device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.label_manager.has_regions
    assert trainer.loss.unc_loss.sigmoid and not trainer.loss.ignore_channel
    train_loader, val_loader = trainer.get_dataloaders()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([trainer.train_step(next(train_loader)) for _ in range(2)])
    trainer.on_validation_epoch_start()
    with torch.no_grad():
        trainer.on_validation_epoch_end([trainer.validation_step(next(val_loader))])
    logged = trainer.logger.my_fantastic_logging
    assert len(logged["dice_per_class_or_region"][0]) == 3  # nnU-Net's own pseudo-Dice, per region
    for key in ("train_seg_losses", "train_unc_losses", "val_seg_losses", "val_unc_losses"):
        assert len(logged[key]) == 1 and np.isfinite(logged[key][0])
    assert logged["train_unc_losses"][0] > 0
    assert logged["train_losses"][0] == pytest.approx(
        logged["train_seg_losses"][0] + 2.0 * logged["train_unc_losses"][0], rel=1e-5
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))

    # nnU-Net's predictor: the label map after regions_class_order, and the sigmoid of each region
    trainer.set_deep_supervision_enabled(False)
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(
        trainer.network, plans, configuration, [trainer.network.state_dict()], DATASET_JSON, "", None
    )
    roots = {role: tmp_path / role for role in ("pred", "label", "unc")}
    for root in roots.values():
        root.mkdir()
    for i in range(3):
        image, label = brats_like(rng, SIZE)
        seg, probs = predictor.predict_single_npy_array(image, {"spacing": [1.0, 1.0, 1.0]}, None, None, True)
        assert probs.shape == (3, SIZE, SIZE, SIZE) and seg.shape == label.shape[1:]
        np.save(roots["pred"] / f"case_{i}.npy", seg)
        np.save(roots["label"] / f"case_{i}.npy", label[0])
        # one uncertainty map per region, 1 - max(p, 1 - p) from the logits: the uncertainty the loss ranks
        logits = np.log(probs) - np.log1p(-probs)
        np.save(roots["unc"] / f"case_{i}.npy", sigmoid_uncertainty_from_logits(logits))
        # nnU-Net's label map holds each region where its sigmoid is above 0.5 (later regions on top)
        for r, labels in enumerate(REGION_LABELS):
            assert np.array_equal(
                np.isin(seg, labels)[probs[r] > 0.5], np.ones(int((probs[r] > 0.5).sum()), bool)
            )

    # evaluate --regions with nnU-Net's dataset.json: its region names, each region's Dice
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    out = tmp_path / "report"
    unc, regions = str(roots["unc"]), str(tmp_path / "dataset.json")
    argv = ["evaluate", "--pred", str(roots["pred"]), "--label", str(roots["label"]), "--uncertainty", unc,
            "--regions", regions, "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = read_report(out)
    assert [row["region"] for row in report["per_class"]] == ["whole tumor", "tumor core", "enhancing tumor"]
    for i, row in enumerate(report["per_image"]):
        seg, label = np.load(roots["pred"] / f"case_{i}.npy"), np.load(roots["label"] / f"case_{i}.npy")
        for dice, labels in zip(row["dice_full_per_class"], REGION_LABELS, strict=True):
            p, t = np.isin(seg, labels), np.isin(label, labels)
            want = 1.0 if not (p.any() or t.any()) else 2 * (p & t).sum() / (p.sum() + t.sum())
            assert dice == pytest.approx(want, rel=1e-12)
    assert "| whole tumor |" in (out / "report.md").read_text()
