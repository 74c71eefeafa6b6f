"""torchmetrics AURC and SelectiveDice: equal to the core on the grid, and under DDP (2 gloo processes)."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

import selectivekit as sk  # noqa: E402
import selectivekit.risk_coverage as rc  # noqa: E402
from selectivekit.adapters.torch_metrics import AURC, SelectiveDice  # noqa: E402
from selectivekit.segmentation import aurc_dice, dice_at_coverage, dice_coverage_curve  # noqa: E402
from selectivekit.streaming import (  # noqa: E402
    DEFAULT_MAX_MEMORY,
    RiskCoverageAccumulator,
    SegmentationAccumulator,
)
from tests.conftest import dense_ranks  # noqa: E402
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


# --- bfloat16, merges of other configurations, checkpoints, float64 aurc_dice, coverage keys, None ----------


def _risk(seed=0, n=600):
    rng = np.random.default_rng(seed)
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)), torch.as_tensor(rng.random(n) < 0.7)


def _images(seed=0, n_images=3, num_classes=3):
    images = make_images(seed, n_images, num_classes, error_rate=0.3, ndim=2)
    return tuple(torch.as_tensor(np.stack([im[j] for im in images])) for j in range(3))


@BUDGETS
def test_bfloat16_tensors_in_the_accumulators(budget):
    u, correct = _risk()
    ub = u.to(torch.bfloat16)
    acc = RiskCoverageAccumulator(max_memory=budget)
    acc.update(ub, correct)  # raised "Got unsupported ScalarType BFloat16" inside torch
    ref = rc.aurc(ub.float().numpy(), correct.numpy())  # bfloat16 -> float32 is exact
    assert acc.aurc() == pytest.approx(ref, abs=1e-14)
    acc.update(u.half(), correct)
    pred, label, uu = _images()
    seg = SegmentationAccumulator(num_classes=3, max_memory=budget)
    seg.update(pred[0], label[0], uu[0].to(torch.bfloat16))
    expected = aurc_dice(
        [pred[0].numpy()], [label[0].numpy()], [uu[0].to(torch.bfloat16).float().numpy()], num_classes=3
    )
    assert seg.aurc_dice() == pytest.approx(expected, abs=1e-14)
    metric = SelectiveDice(num_classes=3, max_memory=budget)
    metric.update(pred, label, uu.to(torch.bfloat16))
    aurc_metric = AURC(max_memory=budget)
    aurc_metric.update(ub, correct)
    assert float(aurc_metric.compute()) == pytest.approx(ref, abs=1e-14)


def test_merge_refuses_other_edges_and_classes():
    u, correct = _risk()
    a, b = AURC(edges=[0.2, 0.5]), AURC(edges=[0.3, 0.5])
    a.update(u, correct)
    b.update(u, correct)
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        a.merge_state(b)  # merged silently, with a wrong result
    pred, label, uu = _images(num_classes=4)
    d3, d4 = SelectiveDice(num_classes=3, include_background=True), SelectiveDice(num_classes=4)
    d4.update(pred, label, uu)
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        d3.merge_state(d4)  # equal state shapes: merged silently
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        SelectiveDice(num_classes=5).merge_state(d4)  # raised a raw torch size error
    with pytest.raises(TypeError, match="`incoming_state` must be a SelectiveDice"):
        d4.merge_state(a)
    with pytest.raises(ValueError, match=r"`incoming_state\['count'\]` must be a tensor of shape"):
        AURC().merge_state({**a.metric_state, "count": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="`other` must use the same grid"):
        RiskCoverageAccumulator().merge(RiskCoverageAccumulator(grid="float32-24"))
    with pytest.raises(ValueError, match="`other` must evaluate the same classes"):
        SegmentationAccumulator(num_classes=3, include_background=True).merge(
            SegmentationAccumulator(num_classes=4)
        )


@BUDGETS
def test_merge_of_the_same_configuration_equals_one_metric(budget):
    u, correct = _risk(1, 900)
    a, b, one = AURC(max_memory=budget), AURC(max_memory=budget), AURC(max_memory=budget)
    a.update(u[:300], correct[:300])
    b.update(u[300:], correct[300:])
    one.update(u, correct)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(one.compute()), abs=1e-15)
    assert float(a.compute()) == pytest.approx(
        rc.aurc(u.numpy(), correct.numpy()), abs=1e-14 if budget else 1e-2
    )
    assert a.result()["path"] == ("exact" if budget else "grid")


@BUDGETS
def test_state_dict_round_trip(budget):
    u, correct = _risk(2)
    metric = AURC(max_memory=budget)
    metric.update(u, correct)
    pred, label, uu = _images(2)
    dice = SelectiveDice(num_classes=3, coverages=[1.0, 0.8], max_memory=budget)
    dice.update(pred, label, uu)
    for original, fresh in (
        (metric, AURC(max_memory=budget)),
        (dice, SelectiveDice(num_classes=3, coverages=[1.0, 0.8], max_memory=budget)),
    ):
        assert original.state_dict()  # was empty
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=False))
        before, after = original.compute(), fresh.compute()
        if isinstance(before, dict):
            assert before.keys() == after.keys()
            for key in before:
                assert torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before, after)
    # a restored metric continues to accumulate
    metric_more = AURC(max_memory=budget)
    metric_more.load_state_dict(metric.state_dict())
    metric_more.update(u, correct)
    both = torch.cat([u, u]).numpy(), torch.cat([correct, correct]).numpy()
    assert float(metric_more.compute()) == pytest.approx(rc.aurc(*both), abs=1e-14 if budget else 1e-2)


def test_state_dict_of_another_configuration_is_refused():
    metric = AURC(edges=[0.5])
    metric.update(*_risk())
    with pytest.raises(ValueError, match="`state_dict` was saved by a AURC of another configuration"):
        AURC(edges=[0.25]).load_state_dict(metric.state_dict())


@BUDGETS
def test_aurc_dice_is_float64_and_exact_on_the_exact_path(budget):
    pred, label, uu = _images(3)
    metric = SelectiveDice(num_classes=3, coverages=[1.0, 0.9], max_memory=budget)
    metric.update(pred, label, uu)
    out = metric.compute()
    for key, value in out.items():
        assert value.dtype == torch.float64, key  # aurc_dice was float32
    imgs = [x.numpy() for x in pred], [x.numpy() for x in label], [x.numpy() for x in uu]
    if budget:
        assert float(out["aurc_dice"]) == aurc_dice(*imgs, num_classes=3)
        ref = dice_at_coverage(*imgs, [1.0, 0.9], num_classes=3)
        assert float(out["dice@0.9"]) == ref[1].mean
        assert float(out["exact"]) == 1.0
    else:
        assert float(out["aurc_dice_low"]) <= aurc_dice(*imgs, num_classes=3) <= float(out["aurc_dice_high"])
        assert float(out["exact"]) == 0.0


def test_colliding_coverage_keys_are_refused():
    with pytest.raises(ValueError, match="`coverages` must give distinct keys"):
        SelectiveDice(num_classes=3, coverages=[0.9, 0.9000001])
    metric = SelectiveDice(num_classes=3, coverages=[0.9, 0.91])
    metric.update(*_images())
    assert {"dice@0.9", "dice@0.91", "coverage@0.9", "coverage@0.91"} <= set(metric.compute())


def test_none_in_update_names_the_argument():
    u, correct = _risk()
    with pytest.raises(TypeError, match="`uncertainty` must be a tensor or array, got None"):
        AURC().update(None, correct)  # was RuntimeError: Could not infer dtype of NoneType
    with pytest.raises(TypeError, match="pass exactly one of `correct`"):
        AURC().update(u, None)
    pred, label, uu = _images()
    for args, name in (
        ((None, label, uu), "pred"),
        ((pred, None, uu), "label"),
        ((pred, label, None), "uncertainty"),
    ):
        with pytest.raises(TypeError, match=f"`{name}` must be a tensor or array, got None"):
            SelectiveDice(num_classes=3).update(*args)
    with pytest.raises(TypeError, match="`uncertainty` must be an array, got None"):
        RiskCoverageAccumulator().update(None, correct.numpy())


# --- integer uncertainty ------------------------------------------------------------------------------------


@pytest.mark.parametrize("beyond", [False, True], ids=["within_2**53", "beyond_2**53"])
@pytest.mark.parametrize("metric", ["AURC", "SelectiveDice"])
def test_torch_metrics_integer_uncertainty(metric, beyond):
    """The torch metrics keep float64 states: integers beyond 2**53 are refused, smaller ones are exact."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("selectivekit.adapters.torch_metrics")
    rng = np.random.default_rng(14)
    offset = 2**60 if beyond else 2**52
    u = offset + rng.integers(0, 40, (3, 30))
    labels = rng.integers(0, 3, (3, 30))
    preds = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    if metric == "AURC":
        m, args = tm.AURC(), (u, preds == labels)
        want = sk.aurc(dense_ranks(u), preds == labels)
    else:
        m, args = tm.SelectiveDice(num_classes=3, coverages=[0.8]), (preds, labels, u)
        want = sk.aurc_dice(preds, labels, dense_ranks(u), num_classes=3)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    if beyond:
        with pytest.raises(ValueError, match=r"`uncertainty` holds integers beyond 2\*\*53"):
            m.update(*tensors)
        return
    m.update(*tensors)
    got = m.compute()
    got = got["aurc_dice"] if isinstance(got, dict) else got
    assert float(got) == pytest.approx(want, rel=1e-12)
