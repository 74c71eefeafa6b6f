"""Lightning: SelectiveDice's scalar views in ``self.log`` and ``MetricCollection``, in one process and
under 2-process DDP on CPU (gloo), against the exact values of the core functions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")
pytest.importorskip("lightning")

import selectivekit as sk  # noqa: E402
from tests.adapters import _lightning_app as app  # noqa: E402

pytestmark = [pytest.mark.filterwarnings(f"{a}:{m}:{c.__name__}") for a, m, c in app.WARNING_FILTERS]

ROOT = Path(__file__).resolve().parents[2]


def _core_values(val_seen) -> dict[str, float]:
    """The logged names and their exact values, from the core functions on every validation image."""
    pred, label, u = (torch.cat([s[j] for s in val_seen]).numpy() for j in range(3))
    out = {"val/aurc_dice": sk.aurc_dice(pred, label, u, num_classes=app.NUM_CLASSES)}
    out["val/aurc"] = out["val/aurc_dice"]
    for r in sk.dice_at_coverage(pred, label, u, list(app.COVERAGES), num_classes=app.NUM_CLASSES):
        name = f"{r.requested:g}".replace(".", "_")
        out[f"val/dice@{name}"] = r.mean
        out[f"val/dice_std@{name}"] = r.std
        out[f"val/coverage@{name}"] = r.coverage
    out["val/dice90"] = out["val/dice@0_9"]
    return out


def _core_unc(train_seen) -> float:
    """The uncertainty term of the last training step, recomputed with the core on NumPy."""
    logits, y = train_seen[-1]
    logits = logits.double().numpy()
    u = sk.uncertainty_from_logits(logits, axis=1)
    return float(sk.uncertainty_margin_loss(u, np.argmax(logits, axis=1) == y.numpy(), margin=0.1))


def _check(logged: dict[str, float], dtypes: dict[str, str], expected: dict[str, float]) -> None:
    assert set(expected) <= set(logged)
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, rel=0, abs=1e-12), name
        assert dtypes[name] == "torch.float64", name  # float64, as documented, through self.log


def test_lightning_two_steps_and_a_validation_epoch():
    module = app.make_module()()
    trainer = app.fit(module, batch_size=2)
    assert trainer.global_step == 2
    assert len(module.val_seen) == 2  # the whole validation epoch: 4 images in batches of 2
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    dtypes = {k: str(v.dtype) for k, v in trainer.callback_metrics.items()}
    _check(logged, dtypes, _core_values(module.val_seen))
    assert logged["train/unc"] == pytest.approx(_core_unc(module.train_seen), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_lightning_ddp_two_cpu_processes_equal_single_process(tmp_path):
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "tests.adapters._lightning_app", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert result["steps"] == 2  # 4 training images, one per rank and step
    assert [len(r["val"]) for r in ranks] == [2, 2]  # each rank validated its half
    val_seen = ranks[0]["val"] + ranks[1]["val"]
    _check(result["metrics"], result["dtypes"], _core_values(val_seen))
    assert result["metrics"]["train/unc"] == pytest.approx(_core_unc(ranks[0]["train"]), rel=1e-5)
