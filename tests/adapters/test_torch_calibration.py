"""The torchmetrics calibration metric against the core accumulator on the same voxels, from logits, after
a state-dict round trip, and under DDP (2 gloo processes)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

from selectivekit import CalibrationAccumulator  # noqa: E402
from selectivekit.adapters.torch_calibration import CalibrationError  # noqa: E402

#: result key -> relative tolerance: the bins are the same voxels' counts (exact to float64 sums); the NLL
#: takes float32 logarithms, which PyTorch and NumPy may round differently in the last bit
KEYS = {
    "expected_calibration_error": 1e-12,
    "maximum_calibration_error": 1e-12,
    "classwise_calibration_error": 1e-12,
    "brier_score": 1e-12,
    "negative_log_likelihood": 1e-7,
}


def _batches(seed: int = 0, n: int = 4):
    """Batches (N, C, H, W) of logits with saturated voxels, and labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        logits = 3 * rng.normal(size=(2, 3, 5, 6))
        logits[:, 0, :2] = 60.0  # softmax saturates at exactly 1 in float32
        out.append(
            (torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(rng.integers(0, 3, (2, 5, 6))))
        )
    return out


def _reference(batches, **kwargs):
    acc = CalibrationAccumulator(3, axis=1, **kwargs)
    for logits, label in batches:
        acc.update(torch.softmax(logits, dim=1).numpy(), label.numpy())
    return acc.compute()


@pytest.mark.parametrize("include_background", [True, False])
def test_equals_the_core_accumulator(include_background):
    batches = _batches()
    metric = CalibrationError(3, n_bins=10, include_background=include_background)
    from_logits = CalibrationError(3, n_bins=10, include_background=include_background, from_logits=True)
    for logits, label in batches:
        metric.update(torch.softmax(logits, dim=1), label)
        from_logits.update(logits, label)
    want = _reference(batches, n_bins=10, include_background=include_background)
    for result in (metric.compute(), from_logits.compute()):
        for key, rel in KEYS.items():
            assert float(result[key]) == pytest.approx(getattr(want, key), rel=rel), key
    np.testing.assert_array_equal(metric.bins().counts, want.bins.counts)
    assert int(metric.voxels) == want.voxels


def test_state_dict_round_trip_and_reset():
    batches = _batches(1)
    metric = CalibrationError(3)
    for logits, label in batches[:2]:
        metric.update(logits.softmax(dim=1), label)
    copy = CalibrationError(3)
    copy.load_state_dict(metric.state_dict())
    for m in (metric, copy):
        for logits, label in batches[2:]:
            m.update(logits.softmax(dim=1), label)
    assert {k: float(v) for k, v in copy.compute().items()} == {
        k: float(v) for k, v in metric.compute().items()
    }
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update`` method"):  # torchmetrics' own warning
        assert np.isnan(float(metric.compute()["expected_calibration_error"]))


def test_refusals():
    metric = CalibrationError(3)
    with pytest.raises(ValueError, match="`probs` must have 3 classes on axis 1, got 2"):
        metric.update(torch.full((1, 2, 4), 0.5), torch.zeros((1, 4), dtype=torch.int64))
    with pytest.raises(ValueError, match="`label`"):
        metric.update(torch.full((1, 3, 4), 1 / 3), torch.full((1, 4), 3))
    with pytest.raises(TypeError, match="`probs` must be a float tensor of logits"):
        CalibrationError(3, from_logits=True).update(
            torch.zeros((1, 3, 4), dtype=torch.int64), torch.zeros((1, 4))
        )
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        CalibrationError(1, include_background=False)
    with pytest.raises(ValueError, match="`n_bins`"):
        CalibrationError(3, n_bins=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batches = _batches(2)
        metric = CalibrationError(3, from_logits=True)
        for logits, label in batches[:1] if rank == 0 else batches[1:]:  # uneven shards
            metric.update(logits, label)
        torch.save(
            {k: float(v) for k, v in metric.compute().items()}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_pass(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    want = _reference(_batches(2))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, rel in KEYS.items():
            assert got[key] == pytest.approx(getattr(want, key), rel=rel), key
