"""torchmetrics AURC and SelectiveDice: equal to the core on the grid, and under DDP (2 gloo processes)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

import selectivekit.risk_coverage as rc  # noqa: E402
from selectivekit.adapters.torch_metrics import AURC, SelectiveDice  # noqa: E402
from selectivekit.segmentation import aurc_dice, dice_at_coverage, dice_coverage_curve  # noqa: E402
from selectivekit.streaming import DEFAULT_MAX_MEMORY, RiskCoverageAccumulator  # noqa: E402
from tests.test_segmentation import make_images  # noqa: E402
from tests.test_streaming import to_bfloat16_grid  # noqa: E402

COVERAGES = [1.0, 0.9, 0.7]


def _risk_data(seed=0, n=5000):
    rng = np.random.default_rng(seed)
    u = to_bfloat16_grid(rng.random(n).astype(np.float32) ** 3)
    correct = rng.random(n) < 0.8
    return u, correct


def _seg_data(seed=0, n_images=6):
    images = make_images(seed, n_images, 4, error_rate=0.2, ndim=3)
    pred, label, u = (np.stack([im[j] for im in images]) for j in range(3))
    return pred, label, to_bfloat16_grid(u)


BUDGETS = pytest.mark.parametrize("budget", [DEFAULT_MAX_MEMORY, 0], ids=["exact", "grid"])


@BUDGETS
def test_aurc_equals_core_on_grid(budget):
    u, correct = _risk_data()
    metric = AURC(max_memory=budget)
    for part_u, part_c in zip(np.array_split(u, 3), np.array_split(correct, 3), strict=True):
        metric.update(torch.as_tensor(part_u), torch.as_tensor(part_c))
    value = metric.compute()
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(rc.aurc(u, correct), abs=1e-14)
    curve = metric.curve()
    ref = rc.risk_coverage_curve(u, correct)
    np.testing.assert_array_equal(curve.threshold.numpy(), ref.threshold)
    np.testing.assert_allclose(curve.risk.numpy(), ref.risk, rtol=0, atol=1e-15)
    # the same numbers as the streaming accumulator, off the grid too
    raw = np.random.default_rng(1).random(3000).astype(np.float32)
    ok = raw > 0.3
    metric.reset()
    metric.update(torch.as_tensor(raw), torch.as_tensor(ok))
    acc = RiskCoverageAccumulator(max_memory=budget)
    acc.update(raw, ok)
    assert float(metric.compute()) == pytest.approx(acc.aurc(), abs=1e-14)


@BUDGETS
def test_aurc_mask_and_soft_risk(budget):
    u, correct = _risk_data(2, 800)
    mask = np.arange(u.size) % 3 != 0
    metric = AURC(max_memory=budget)
    metric.update(torch.as_tensor(u), torch.as_tensor(correct), mask=torch.as_tensor(mask))
    assert float(metric.compute()) == pytest.approx(rc.aurc(u, correct, mask=mask), abs=1e-14)
    soft = np.random.default_rng(3).random(u.size)
    metric = AURC(max_memory=budget)
    metric.update(torch.as_tensor(u), risk=torch.as_tensor(soft))
    assert float(metric.compute()) == pytest.approx(rc.aurc(u, risk=soft), abs=1e-14)


@BUDGETS
def test_selective_dice_equals_core_on_grid(budget):
    pred, label, u = _seg_data()
    metric = SelectiveDice(num_classes=4, coverages=COVERAGES, max_memory=budget)
    metric.update(torch.as_tensor(pred[:4]), torch.as_tensor(label[:4]), torch.as_tensor(u[:4]))
    metric.update(torch.as_tensor(pred[4:]), torch.as_tensor(label[4:]), torch.as_tensor(u[4:]))
    out = metric.compute()
    assert out["aurc_dice"] == pytest.approx(aurc_dice(pred, label, u, num_classes=4), abs=1e-12)
    for r in dice_at_coverage(pred, label, u, COVERAGES, num_classes=4):
        c = f"{r.requested:g}"
        assert float(out[f"dice@{c}"]) == pytest.approx(r.mean, abs=1e-12)
        assert float(out[f"dice_std@{c}"]) == pytest.approx(r.std, abs=1e-7)
        assert float(out[f"coverage@{c}"]) == r.coverage
        np.testing.assert_allclose(
            metric.class_dice(r.requested).numpy(), r.per_class_dice.mean(axis=0), atol=1e-12
        )
    curve = metric.curve()
    ref = dice_coverage_curve(pred, label, u, num_classes=4)
    np.testing.assert_array_equal(curve.threshold.numpy(), ref.threshold)
    np.testing.assert_array_equal(curve.coverage.numpy(), ref.coverage)
    np.testing.assert_allclose(curve.mean_dice.numpy(), ref.mean_dice, atol=1e-12)


def test_selective_dice_list_of_images_and_errors():
    images = make_images(4, 3, 3, varying=True)
    images = [(p, lab, to_bfloat16_grid(u)) for p, lab, u in images]
    metric = SelectiveDice(num_classes=3, coverages=0.8, edges=[0.25, 0.5, 0.75], max_memory=0)
    metric.update(*([torch.as_tensor(im[j]) for im in images] for j in range(3)))
    assert set(metric.compute()) == {
        "aurc_dice",
        "aurc_dice_low",
        "aurc_dice_high",
        "exact",
        "dice@0.8",
        "dice_low@0.8",
        "dice_high@0.8",
        "dice_std@0.8",
        "coverage@0.8",
    }
    with pytest.raises(ValueError, match=r"`label` must hold labels in \[0, 3\)"):
        metric.update(torch.zeros(1, 2, dtype=torch.int64), torch.full((1, 2), 3), torch.zeros(1, 2))
    with (
        pytest.raises(ValueError, match="no image was accumulated"),
        pytest.warns(UserWarning, match="before"),
    ):
        SelectiveDice(num_classes=3).compute()
    with pytest.raises(ValueError, match="`coverages` must be in"):
        SelectiveDice(num_classes=3, coverages=[0.0])


def test_state_sizes_are_fixed():
    metric = SelectiveDice(num_classes=8, max_memory=0)
    sizes = {
        name: getattr(metric, name).numel()
        for name in metric._defaults
        if isinstance(getattr(metric, name), torch.Tensor) and name != "on_grid"
    }
    assert sizes == {
        "count": 65536,
        "max_u": 65536,
        "dice_sum": 65536,
        "dice_sq_sum": 65536,
        "class_dice_sum": 7 * 65536,
        "n_images": 1,
    }
    assert (
        sum(getattr(metric, n).element_size() * s for n, s in sizes.items()) < 6 * 2**20
    )  # 11 x 65536 values of 8 bytes: 5.5 MiB


# ----------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes on CPU


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
        u, correct = _risk_data()
        pred, label, uu = _seg_data()
        # uneven shards: rank 0 gets the first third, rank 1 the rest
        cut = u.size // 3 if rank == 0 else u.size
        lo = 0 if rank == 0 else u.size // 3
        images = [0, 1] if rank == 0 else [2, 3, 4, 5]
        saved = {}
        # exact on both ranks, grid on both, and mixed (rank 0 exact, rank 1 grid: the result is the grid's)
        for name, budget in (
            ("exact", DEFAULT_MAX_MEMORY),
            ("grid", 0),
            ("mixed", DEFAULT_MAX_MEMORY * (1 - rank)),
        ):
            aurc_metric = AURC(max_memory=budget)
            dice_metric = SelectiveDice(num_classes=4, coverages=COVERAGES, max_memory=budget)
            aurc_metric.update(torch.as_tensor(u[lo:cut]), torch.as_tensor(correct[lo:cut]))
            dice_metric.update(
                torch.as_tensor(pred[images]), torch.as_tensor(label[images]), torch.as_tensor(uu[images])
            )
            result = {"aurc": aurc_metric.compute(), **dice_metric.compute()}
            result["aurc_path"] = aurc_metric.result()["path"]
            with dice_metric.sync_context():
                synced = {
                    n: getattr(dice_metric, n).clone()
                    for n in ("count", "max_u", "n_images", "dice_sum", "dice_sq_sum", "class_dice_sum")
                }
            saved[name] = {"result": result, "states": synced}
        torch.save(saved, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    u, correct = _risk_data()
    pred, label, uu = _seg_data()
    for name, budget in (("exact", DEFAULT_MAX_MEMORY), ("grid", 0), ("mixed", 0)):
        single_aurc = AURC(max_memory=budget)
        single_aurc.update(torch.as_tensor(u), torch.as_tensor(correct))
        single_dice = SelectiveDice(num_classes=4, coverages=COVERAGES, max_memory=budget)
        single_dice.update(torch.as_tensor(pred), torch.as_tensor(label), torch.as_tensor(uu))
        expected = {"aurc": single_aurc.compute(), **single_dice.compute()}
        for rank in range(2):
            saved = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert saved["result"].pop("aurc_path") == ("exact" if name == "exact" else "grid")
            if budget == 0 and name == "grid":
                # integer states and maxima are identical; the grid AURC comes from them alone: bitwise equal
                for state in ("count", "max_u", "n_images"):
                    assert torch.equal(saved["states"][state], getattr(single_dice, state)), state
                # the per-cell Dice sums are float64 sums over images: equal up to summation order
                for state in ("dice_sum", "dice_sq_sum", "class_dice_sum"):
                    torch.testing.assert_close(
                        saved["states"][state], getattr(single_dice, state), rtol=0, atol=1e-12
                    )
            assert torch.equal(saved["result"]["aurc"], expected["aurc"])
            assert float(saved["result"]["aurc"]) == pytest.approx(rc.aurc(u, correct), abs=1e-14)
            for key, value in expected.items():
                torch.testing.assert_close(saved["result"][key], value, rtol=0, atol=1e-12)
