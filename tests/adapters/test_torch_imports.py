"""Optional imports of the PyTorch adapter: the losses need torch only, torchmetrics comes on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

# torchmetrics made unimportable, as when a CUDA torchvision beside a CPU torch breaks its import
BLOCKER = """
import sys

class BlockTorchmetrics:
    def find_spec(self, name, path=None, target=None):
        if name == "torchmetrics" or name.startswith("torchmetrics."):
            raise ImportError(f"{name} is blocked by the test")
        return None

sys.meta_path.insert(0, BlockTorchmetrics())
"""


def run_without_torchmetrics(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_losses_work_without_torchmetrics_and_metrics_say_what_is_missing():
    result = run_without_torchmetrics(
        """
        import torch
        import selectivekit.adapters.torch as skt
        from selectivekit.adapters.torch import UncertaintyAwareLoss, uncertainty_margin_loss

        logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]], [[0.0, 1.0], [3.0, 0.0]]]).reshape(2, 2, 2, 1)
        labels = torch.tensor([[0, 1], [0, 0]]).reshape(2, 2, 1)
        assert float(UncertaintyAwareLoss(weight=1.0, warmup=0, ramp=0)(logits, labels)) > 0
        u = torch.tensor([0.25, 0.5, 0.75, 0.0])
        value = float(uncertainty_margin_loss(u, torch.tensor([True, True, False, False]), margin=0.25,
                                              reduction="sum"))
        assert "torchmetrics" not in sys.modules
        print("loss", value)
        for name in ("AURC", "SelectiveDice"):
            try:
                getattr(skt, name)
            except ImportError as exc:
                print("ImportError", name, exc)
        try:
            from selectivekit.adapters.torch import AURC
        except ImportError as exc:
            print("from-import ImportError")
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "loss 1.25"  # the core's docstring example: pairs 0.5 + 0.75
    for name in ("AURC", "SelectiveDice"):
        (line,) = [line for line in lines if line.startswith(f"ImportError {name} ")]
        assert "need torchmetrics" in line and "pip install torchmetrics" in line
        assert "blocked by the test" in line  # the original cause is shown
    assert "from-import ImportError" in lines


def test_metrics_import_when_torchmetrics_is_there():
    import selectivekit.adapters.torch as skt
    from selectivekit.adapters import torch_metrics

    assert skt.AURC is torch_metrics.AURC and skt.SelectiveDice is torch_metrics.SelectiveDice
    with pytest.raises(AttributeError, match="no attribute 'NotAMetric'"):
        skt.NotAMetric
