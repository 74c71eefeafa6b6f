"""selectivekit.adapters.nnunet: the trainers' loss against nnU-Net's own loss + UncertaintyMarginLoss, the
install command, and (slow) nnU-Net v2 itself: plan, preprocess, train, validate and predict on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# subprocesses import this checkout first (PYTHONPATH kept after it)
PYTHONPATH = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import nnunetv2.training.logging.nnunet_logger as nnunet_logging  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.label_handling.label_handling import LabelManager  # noqa: E402

import selectivekit.adapters.nnunet as sknn  # noqa: E402
from selectivekit.adapters.torch import UncertaintyMarginLoss  # noqa: E402

# nnU-Net's deep-supervision weights for 3 outputs, written out: 1, 1/2, 1/4 -> lowest at 0 -> sum 1
DS_WEIGHTS = (2 / 3, 1 / 3, 0.0)
POOL = [[1, 1], [2, 2], [2, 2], [2, 2]]  # 4 stages -> 3 deep-supervision outputs


def _stub(cls, *, ignore: bool, deep_supervision: bool = True):
    """A ``cls`` with only what ``_build_loss`` reads (nnU-Net's own __init__ needs a dataset on disk)."""
    labels = {"background": 0, "a": 1, "b": 2}
    if ignore:
        labels["ignore"] = 3
    trainer = object.__new__(cls)
    trainer.label_manager = LabelManager(labels, regions_class_order=None)
    trainer.configuration_manager = SimpleNamespace(batch_dice=True, pool_op_kernel_sizes=POOL)
    trainer.enable_deep_supervision = deep_supervision
    trainer.is_ddp = False
    trainer.device = torch.device("cpu")
    trainer.messages = []
    trainer.print_to_log_file = lambda *args, **kwargs: trainer.messages.append(" ".join(map(str, args)))
    return trainer


def _inputs(*, ignore: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = (16, 8, 4)
    outputs = [torch.randn(2, 3, s, s, generator=g, requires_grad=True) for s in sizes]
    targets = []
    for s in sizes:
        t = torch.randint(0, 3, (2, 1, s, s), generator=g)
        if ignore:
            t[:, :, :2] = 3  # two rows not annotated
        targets.append(t.float())  # nnU-Net's loaders give float labels
    return outputs, targets


@pytest.mark.parametrize("ignore", [False, True], ids=["labels", "ignore-label"])
@pytest.mark.parametrize(
    "cls_name", ["nnUNetTrainerUncertaintyAware", "nnUNetTrainerUncertaintyAwareAllScales_5epochs"]
)
def test_loss_is_nnunet_loss_plus_weighted_margin_loss(cls_name, ignore):
    cls = getattr(sknn, cls_name)

    class Weighted(cls):
        uncertainty_weight = 3.0

    trainer = _stub(Weighted, ignore=ignore)
    ours = trainer._build_loss()
    own = nnUNetTrainer._build_loss(_stub(nnUNetTrainer, ignore=ignore))  # nnU-Net's loss, built by nnU-Net
    margin = UncertaintyMarginLoss(0.1, push=cls.uncertainty_push, ignore_index=3 if ignore else -100)
    assert cls.uncertainty_push == "binary"  # the default setting of the reference trainers

    outputs, targets = _inputs(ignore=ignore)
    loss = ours(outputs, targets)
    grads = torch.autograd.grad(loss, outputs, allow_unused=True)  # the lowest scale has weight 0

    if cls.uncertainty_on_all_scales:
        unc = sum(w * margin(o, t.long()) for w, o, t in zip(DS_WEIGHTS, outputs, targets, strict=True))
    else:
        unc = margin(outputs[0], targets[0].long())
    seg = own(outputs, targets)
    expected = seg + 3.0 * unc
    expected_grads = torch.autograd.grad(expected, outputs, allow_unused=True)

    torch.testing.assert_close(loss, expected)
    for got, want, o in zip(grads, expected_grads, outputs, strict=True):
        zero = torch.zeros_like(o)
        torch.testing.assert_close(zero if got is None else got, zero if want is None else want)
    torch.testing.assert_close(ours.last_seg_loss, seg.detach())
    torch.testing.assert_close(ours.last_unc_loss, unc.detach())
    assert bool(unc > 0)
    assert ours.unc_loss.ignore_index == (3 if ignore else -100)
    assert ours.scale_weights == (pytest.approx(DS_WEIGHTS) if cls.uncertainty_on_all_scales else None)
    assert any("Uncertainty-aware loss: weight 3.0" in m for m in trainer.messages)


def test_ignored_voxels_take_no_part():
    trainer = _stub(sknn.nnUNetTrainerUncertaintyAware, ignore=True)
    loss = trainer._build_loss()
    outputs, targets = _inputs(ignore=True)
    changed = [o.detach().clone().requires_grad_(True) for o in outputs]
    with torch.no_grad():
        changed[0][:, :, :2] = torch.randn(2, 3, 2, 16) * 10  # only the ignored rows change
    a = loss.uncertainty_term(outputs, targets)
    b = loss.uncertainty_term(changed, targets)
    torch.testing.assert_close(a, b)
    (grad,) = torch.autograd.grad(loss.uncertainty_term(outputs, targets), outputs[0])
    assert torch.all(grad[:, :, :2] == 0)


def test_without_deep_supervision_a_single_output():
    trainer = _stub(sknn.nnUNetTrainerUncertaintyAwareAllScales, ignore=False, deep_supervision=False)
    ours = trainer._build_loss()
    own = nnUNetTrainer._build_loss(_stub(nnUNetTrainer, ignore=False, deep_supervision=False))
    outputs, targets = _inputs(ignore=False)
    expected = own(outputs[0], targets[0]) + sknn.DEFAULT_WEIGHT * UncertaintyMarginLoss()(
        outputs[0], targets[0].long()
    )
    torch.testing.assert_close(ours(outputs[0], targets[0]), expected)
    assert ours.scale_weights is None


def _nnunet_logger(folder: Path):
    if hasattr(nnunet_logging, "MetaLogger"):  # nnU-Net 2.8
        return nnunet_logging.MetaLogger(str(folder), False)
    return nnunet_logging.nnUNetLogger()


def test_terms_are_logged_per_epoch(tmp_path):
    trainer = _stub(sknn.nnUNetTrainerUncertaintyAware, ignore=False)
    trainer.loss = trainer._build_loss()
    trainer.logger = _nnunet_logger(tmp_path)
    logged = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging
    for key in ("train_seg_losses", "train_unc_losses", "val_seg_losses", "val_unc_losses"):
        logged.setdefault(key, [])  # as __init__ does (run for real below)
    trainer.current_epoch = 0
    trainer._unc_terms = {"train": [], "val": []}
    seen = []
    for seed in (0, 1):
        outputs, targets = _inputs(ignore=False, seed=seed)
        trainer.loss(outputs, targets)
        trainer._record_terms("train")
        seen.append((float(trainer.loss.last_seg_loss), float(trainer.loss.last_unc_loss)))
    trainer._log_terms("train")
    assert logged["train_seg_losses"] == [pytest.approx((seen[0][0] + seen[1][0]) / 2)]
    assert logged["train_unc_losses"] == [pytest.approx((seen[0][1] + seen[1][1]) / 2)]
    assert any(m.startswith("train_seg_loss") and "train_unc_loss" in m for m in trainer.messages)
    assert trainer._unc_terms["train"] == []


def test_trainer_classes():
    assert len(set(sknn.TRAINER_NAMES)) == 2 * (1 + len(sknn.SHORT_SCHEDULES))
    for name in sknn.TRAINER_NAMES:
        cls = getattr(sknn, name)
        assert cls.__name__ == name and cls.__module__ == "selectivekit.adapters.nnunet"
        assert issubclass(cls, nnUNetTrainer)
        assert cls.uncertainty_weight == sknn.DEFAULT_WEIGHT
    assert sknn.nnUNetTrainerUncertaintyAware_1epoch.schedule_epochs == 1
    assert sknn.nnUNetTrainerUncertaintyAwareAllScales_250epochs.schedule_epochs == 250
    assert sknn.nnUNetTrainerUncertaintyAwareAllScales_250epochs.uncertainty_on_all_scales
    assert sknn.nnUNetTrainerUncertaintyAware.schedule_epochs is None
    assert set(sknn.__all__) >= set(sknn.TRAINER_NAMES) and sknn.__all__ == sorted(sknn.__all__)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": PYTHONPATH, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=300
    )


def test_import_needs_neither_torch_nor_nnunet():
    done = _python(
        "import sys, selectivekit.adapters.nnunet as m; m.shim_path(); "
        "print(sorted(k for k in ('torch', 'torchvision', 'nnunetv2') if k in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_nnunet_says_what_to_install():
    done = _python(
        "import sys; sys.modules['nnunetv2'] = None\n"
        "import selectivekit.adapters.nnunet as m\n"
        "try:\n    m.nnUNetTrainerUncertaintyAware\nexcept ImportError as e:\n    print('class:', e)\n"
        "try:\n    m.shim_path()\nexcept ImportError as e:\n    print('path:', e)\n"
        "sys.exit(m.main(['path']))"
    )
    assert done.returncode == 1
    assert "class: selectivekit's nnU-Net trainers need nnU-Net v2" in done.stdout
    assert "pip install nnunetv2" in done.stdout and "path: nnU-Net v2 is not installed" in done.stdout
    assert "selectivekit-nnunet: error: nnU-Net v2 is not installed" in done.stderr


def test_install_and_uninstall_in_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sknn, "_nnunet_trainer_folder", lambda: tmp_path)
    assert sknn.main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / sknn.SHIM_NAME)
    path = sknn.install_trainer(check=False)
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["nnUNetTrainerUncertaintyAware"] is sknn.nnUNetTrainerUncertaintyAware
    assert set(sknn.TRAINER_NAMES) <= set(namespace)
    assert sknn.main(["uninstall-trainer"]) == 0
    assert not path.exists()
    assert sknn.uninstall_trainer() is None
    assert sknn.main(["list"]) == 0
    assert capsys.readouterr().out.split()[-len(sknn.TRAINER_NAMES) :] == list(sknn.TRAINER_NAMES)


def test_shim_leaves_nnunet_working_without_selectivekit(tmp_path, monkeypatch):
    monkeypatch.setattr(sknn, "_nnunet_trainer_folder", lambda: tmp_path)
    path = sknn.install_trainer(check=False)
    done = _python(
        f"import sys; sys.modules['selectivekit'] = None; exec(open({str(path)!r}).read()); print('ok')"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_console_script_declared():
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert 'selectivekit-nnunet = "selectivekit_entry:selectivekit_nnunet"' in scripts
    import selectivekit_entry

    source = Path(selectivekit_entry.__file__).read_text()
    assert '_run("selectivekit.adapters.nnunet:main", "selectivekit-nnunet")' in source


# --- nnU-Net v2 for real ----------------------------------------------------------------------------------

_ENTRY = "import sys; from {module} import {function} as entry; sys.argv[0] = {name!r}; entry()"


def _nnunet_command(name: str, module: str, function: str, *args: str, env: dict) -> None:
    """Run one of nnU-Net's console commands (its entry point, as the installed script does)."""
    code = _ENTRY.format(module=module, function=function, name=name)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_nnunet_plans_trains_validates_and_predicts(tmp_path):
    """The user's steps, in nnU-Net's own code: install-trainer, plan, preprocess, train, --val, predict."""
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "nnUNet_raw": str(tmp_path / "raw"),
        "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
        "nnUNet_results": str(tmp_path / "results"),
        "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1",
    }
    shim = sknn.shim_path()
    had_shim = shim.exists()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "selectivekit.adapters.nnunet", "install-trainer"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == str(shim)

        done = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "adapters" / "_nnunet_pipeline.py"), str(tmp_path)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        result = json.loads(line.removeprefix("RESULT "))
        assert result["trainer_module"] == "selectivekit.adapters.nnunet"
        assert result["trainer_class"] == "nnUNetTrainerUncertaintyAware_1epoch"
        assert result["num_epochs"] == 1
        assert result["loss_class"] == "NNUNetUncertaintyAwareLoss"
        assert result["ignore_index"] == 2  # dataset.json's "ignore" label
        assert result["scale_weights"] is None
        logged = result["logged"]
        assert set(logged) == {"train_seg_losses", "train_unc_losses", "val_seg_losses", "val_unc_losses"}
        assert all(len(v) == 1 and v[0] == v[0] for v in logged.values())  # one finite value per epoch
        assert logged["train_unc_losses"][0] > 0
        schedule = object.__new__(sknn.nnUNetTrainerUncertaintyAware_1epoch)
        schedule.num_epochs = 1
        factor = schedule.uncertainty_factor(
            0
        )  # 0: the one epoch lies in the warm-up of the default schedule
        assert result["train_losses"][0] == pytest.approx(
            logged["train_seg_losses"][0] + sknn.DEFAULT_WEIGHT * factor * logged["train_unc_losses"][0]
        )
        assert result["log_has_terms"]
        fold = Path(result["output_folder"])
        assert (fold / "checkpoint_final.pth").is_file()

        trainer = "nnUNetTrainerUncertaintyAware_1epoch"
        _nnunet_command(
            "nnUNetv2_train", "nnunetv2.run.run_training", "run_training_entry",
            "501", "2d", "0", "-tr", trainer, "--val", "-device", "cpu", env=env,
        )  # fmt: skip
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        assert "foreground_mean" in summary

        images = tmp_path / "raw" / "Dataset501_SelectiveToy" / "imagesTs"
        out = tmp_path / "predicted"
        _nnunet_command(
            "nnUNetv2_predict", "nnunetv2.inference.predict_from_raw_data", "predict_entry_point",
            "-i", str(images), "-o", str(out), "-d", "501", "-c", "2d", "-f", "0", "-tr", trainer,
            "-device", "cpu", "--save_probabilities", "-npp", "1", "-nps", "1", "--disable_progress_bar",
            env=env,
        )  # fmt: skip
        for case in ("toy_008", "toy_009"):
            assert (out / f"{case}.png").is_file()
            probabilities = np.load(out / f"{case}.npz")["probabilities"]
            assert probabilities.shape == (2, 1, 48, 48)  # background, disk; (c, z, y, x)
            np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-3)
    finally:
        if not had_shim:
            sknn.uninstall_trainer()


def test_weight_schedule_warms_up_then_ramps():
    trainer = _stub(sknn.nnUNetTrainerUncertaintyAware, ignore=False)
    trainer.num_epochs = 100
    factors = [trainer.uncertainty_factor(e) for e in (0, 24, 25, 30, 50, 99)]
    assert factors == [0.0, 0.0, 0.0, pytest.approx(0.2), 1.0, 1.0]

    class Authors(sknn.nnUNetTrainerUncertaintyAware):
        uncertainty_warmup = 0.0
        uncertainty_ramp = 0.0

    authors = _stub(Authors, ignore=False)
    authors.num_epochs = 100
    assert authors.uncertainty_factor(0) == 1.0
