"""SPEC section 7: every bad input to the core metrics raises a clear error naming the argument."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import selectivekit as sk
from tests.conftest import LONG_DOUBLE_WIDE

U = np.array([0.1, 0.2, 0.3, 0.4])
C = np.array([True, False, True, True])

METRICS = {
    "aurc": lambda u, c, **kw: sk.aurc(u, c, **kw),
    "e_aurc": lambda u, c, **kw: sk.e_aurc(u, c, **kw),
    "augrc": lambda u, c, **kw: sk.augrc(u, c, **kw),
    "curve": lambda u, c, **kw: sk.risk_coverage_curve(u, c, **kw),
    "risk_at_coverage": lambda u, c, **kw: sk.risk_at_coverage(u, c, 0.5, **kw),
    "coverage_at_risk": lambda u, c, **kw: sk.coverage_at_risk(u, c, 0.1, **kw),
    "selective_split": lambda u, c, **kw: sk.selective_split(u, c, 0.5, **kw),
    "selective_accuracy": lambda u, c, **kw: sk.selective_accuracy(u, c, 0.5, **kw),
    "gamma": lambda u, c, **kw: sk.gamma(u, c, 0.5, **kw),
    "check_theorem1": lambda u, c, **kw: sk.check_theorem1(u, c, 0.5, **kw),
}

metric = pytest.mark.parametrize("fn", list(METRICS.values()), ids=list(METRICS))


@metric
def test_shape_mismatch(fn):
    with pytest.raises(
        ValueError, match=r"`correct` must have the same shape as `uncertainty` \(4,\), got \(3,\)"
    ):
        fn(U, C[:3])


@metric
def test_empty_input(fn):
    with pytest.raises(ValueError, match="`uncertainty` is empty"):
        fn(np.array([]), np.array([], dtype=bool))


@metric
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_uncertainty(fn, bad):
    u = U.copy()
    u[1] = bad
    with pytest.raises(ValueError, match="`uncertainty` must be finite, got 1 NaN or infinite"):
        fn(u, C)


@metric
def test_correct_not_boolean(fn):
    with pytest.raises(ValueError, match="`correct` must be boolean or hold only 0 and 1"):
        fn(U, np.array([0, 1, 2, 1]))
    with pytest.raises(TypeError, match="`correct` must be boolean or 0/1"):
        fn(U, np.array(["a", "b", "c", "d"]))


@metric
def test_uncertainty_wrong_type(fn):
    with pytest.raises(TypeError, match="`uncertainty` must hold real numbers"):
        fn(np.array([True, False, True, True]), C)


@metric
def test_mask_errors(fn):
    with pytest.raises(TypeError, match="`mask` must be a boolean array"):
        fn(U, C, mask=np.ones(4))
    with pytest.raises(ValueError, match="`mask` selects no instance"):
        fn(U, C, mask=np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="`mask` must have the same shape"):
        fn(U, C, mask=np.ones(3, dtype=bool))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, np.nan, np.inf])
@pytest.mark.parametrize(
    "fn",
    [sk.selective_split, sk.selective_accuracy, sk.gamma, sk.check_theorem1, sk.risk_at_coverage],
)
def test_coverage_outside_unit_interval(fn, bad):
    with pytest.raises(ValueError, match=r"`coverage` must be in \(0, 1\]"):
        fn(U, C, bad)


def test_coverage_threshold_errors():
    with pytest.raises(ValueError, match=r"`coverage` must be in \(0, 1\], got 0"):
        sk.coverage_threshold(U, 0)
    with pytest.raises(TypeError, match="`coverage` must be a real number"):
        sk.coverage_threshold(U, "0.5")


def test_max_risk_range():
    with pytest.raises(ValueError, match=r"`max_risk` must be in \[0, 1\]"):
        sk.coverage_at_risk(U, C, 1.5)


def test_risk_argument_errors():
    with pytest.raises(TypeError, match="exactly one of `correct`"):
        sk.aurc(U, C, risk=np.zeros(4))
    with pytest.raises(TypeError, match="exactly one of `correct`"):
        sk.aurc(U)
    with pytest.raises(ValueError, match=r"`risk` must lie in \[0, 1\]"):
        sk.aurc(U, risk=np.array([0.1, 2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="`risk` must be finite"):
        sk.aurc(U, risk=np.array([0.1, np.nan, 0.0, 0.0]))


def test_mixed_array_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        sk.aurc(torch.tensor([0.1, 0.2]), np.array([True, False]))


def test_lists_are_accepted():
    assert sk.aurc([0.1, 0.2, 0.3], [True, False, True]) == sk.aurc(
        np.array([0.1, 0.2, 0.3]), np.array([1, 0, 1])
    )


def test_non_array_object():
    with pytest.raises(TypeError, match="`uncertainty`"):
        sk.aurc(object(), C)


@pytest.mark.parametrize(("largest", "num_classes"), [(2, 2), (3, 3), (9, 4)])
@pytest.mark.parametrize("where", ["label", "pred"])
def test_too_small_num_classes_suggests_the_count(largest, num_classes, where):
    label = np.array([[0, 1, largest, 0]])
    pred = np.zeros_like(label)
    u = np.linspace(0.0, 1.0, 4).reshape(1, 4)
    arrays = {"label": label, "pred": pred} if where == "label" else {"label": pred, "pred": label}
    with pytest.raises(ValueError, match=f"`{where}`") as info:
        sk.dice_at_coverage(arrays["pred"], arrays["label"], u, 0.9, num_classes=num_classes)
    assert f"got values in [0, {largest}]; if {largest} is a class, pass num_classes={largest + 1}" in str(
        info.value
    )


def test_float16_labels_are_checked_without_overflow_warnings():
    # Defect (found by the fuzz test): the integer-range bounds and a num_classes above 65504 were cast to
    # float16 for the comparison, which overflowed and warned; float16 labels hold only representable values
    import warnings

    from selectivekit._lib import check_labels

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = check_labels(np.array([0, 3, 7], dtype=np.float16), "label", np, num_classes=70_000)
        np.testing.assert_array_equal(got, [0, 3, 7])
        with pytest.raises(ValueError, match="`label`"):
            check_labels(np.array([0, 2.5], dtype=np.float16), "label", np, num_classes=70_000)
        with pytest.raises(ValueError, match="`label`"):
            check_labels(np.array([0, -1], dtype=np.float16), "label", np, num_classes=70_000)


# --------------------------------------------------------------------------------------------------
# PyTorch: bfloat16 uncertainty is widened (NumPy has no bfloat16); meta tensors hold no values


def _fields(result):
    """A result as a tuple of arrays: a dataclass by its fields, a tuple as it is, a number alone."""
    if dataclasses.is_dataclass(result):
        result = dataclasses.astuple(result)
    return tuple(np.asarray(x) for x in (result if isinstance(result, tuple) else (result,)))


@metric
@pytest.mark.parametrize("seed", range(3))
def test_bfloat16_uncertainty_equals_its_float32_values(fn, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    u = torch.from_numpy(rng.random(200).astype(np.float32)).to(torch.bfloat16)  # many ties after rounding
    c = torch.from_numpy(rng.random(200) < 0.7)
    got, want = _fields(fn(u, c)), _fields(fn(u.float(), c))  # every bfloat16 value is a float32 value
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def _meta(*shape, dtype="float32"):
    import torch

    return torch.empty(*shape, dtype=getattr(torch, dtype), device="meta")


def _meta_accumulators():
    from selectivekit.streaming import RiskCoverageAccumulator, SegmentationAccumulator

    labels = _meta(4, dtype="int64")
    return {
        "RiskCoverageAccumulator": lambda: RiskCoverageAccumulator().update(_meta(8), _meta(8, dtype="bool")),
        "SegmentationAccumulator": lambda: SegmentationAccumulator(num_classes=3).update(
            labels, labels, _meta(4)
        ),
    }


META_CALLS = {
    **{name: ("uncertainty", lambda f=f: f(_meta(8), _meta(8, dtype="bool"))) for name, f in METRICS.items()},
    "aurc(correct)": ("correct", lambda: sk.aurc(np.zeros(8), _meta(8, dtype="bool"))),
    "max_softmax_uncertainty": ("probs", lambda: sk.max_softmax_uncertainty(_meta(3, 4), axis=0)),
    "uncertainty_margin_loss": (
        "uncertainty",
        lambda: sk.uncertainty_margin_loss(_meta(8), _meta(8, dtype="bool")),
    ),
    "aurc_dice": (
        "pred",
        lambda: sk.aurc_dice(
            _meta(2, 4, dtype="int64"), _meta(2, 4, dtype="int64"), _meta(2, 4), num_classes=3
        ),
    ),
    "RiskCoverageAccumulator": ("uncertainty", lambda: _meta_accumulators()["RiskCoverageAccumulator"]()),
    "SegmentationAccumulator": ("pred", lambda: _meta_accumulators()["SegmentationAccumulator"]()),
}


@pytest.mark.parametrize(("argument", "call"), list(META_CALLS.values()), ids=list(META_CALLS))
def test_meta_tensors_are_refused_naming_the_argument(argument, call):
    pytest.importorskip("torch")
    expected = rf"^`{argument}` must hold values, got a PyTorch tensor on the meta device"
    with pytest.raises(ValueError, match=expected):
        call()


# --- masked arrays: refused, the message points to `mask=` --------------------------------------------------


_RNG = np.random.default_rng(0)


_U = _RNG.random(40)


_C = _RNG.random(40) < 0.7


_PRED = _RNG.integers(0, 3, (3, 5, 5))


_LABEL = _RNG.integers(0, 3, (3, 5, 5))


_US = _RNG.random((3, 5, 5))


def _masked(x: np.ndarray) -> np.ma.MaskedArray:
    """``x`` as a masked array whose first value is NaN (or an out-of-range label) under the mask."""
    data = np.array(x, dtype=np.float64 if x.dtype.kind == "f" else x.dtype)
    flat = data.reshape(-1)
    flat[0] = np.nan if data.dtype.kind == "f" else 99 if data.dtype.kind in "iu" else flat[0]
    mask = np.zeros(data.shape, bool)
    mask.reshape(-1)[0] = True
    return np.ma.masked_array(data, mask=mask)


def _rc_acc(u, c):
    acc = sk.RiskCoverageAccumulator()
    acc.update(u, c)
    return acc.aurc()


def _seg_acc(p, t, u):
    acc = sk.SegmentationAccumulator(num_classes=3)
    for i in range(len(p)):
        acc.update(p[i], t[i], u[i])
    return acc.compute().mean_dice


INSTANCE_FUNCTIONS = {
    "aurc": sk.aurc,
    "e_aurc": sk.e_aurc,
    "augrc": sk.augrc,
    "risk_coverage_curve": lambda u, c: sk.risk_coverage_curve(u, c).threshold,
    "gamma": lambda u, c: sk.gamma(u, c, 0.5),
    "selective_accuracy": lambda u, c: sk.selective_accuracy(u, c, 0.5),
    "coverage_threshold": lambda u, c: sk.coverage_threshold(u, 0.5),
    "bootstrap_ci": lambda u, c: sk.bootstrap_ci("aurc", u, c, n_resamples=20, seed=0),
    "guaranteed_risk_threshold": lambda u, c: sk.guaranteed_risk_threshold(u, c, target_risk=0.5, delta=0.1),
    "uncertainty_margin_loss": sk.uncertainty_margin_loss,
    "RiskCoverageAccumulator": _rc_acc,
}


SEGMENTATION_FUNCTIONS = {
    "aurc_dice": lambda p, t, u: sk.aurc_dice(p, t, u, num_classes=3),
    "dice_at_coverage": lambda p, t, u: sk.dice_at_coverage(p, t, u, [0.5], num_classes=3)[0].mean,
    "dice_coverage_curve": lambda p, t, u: sk.dice_coverage_curve(p, t, u, num_classes=3),
    "bootstrap_ci": lambda p, t, u: sk.bootstrap_ci(
        "aurc_dice", p, t, u, num_classes=3, n_resamples=20, seed=0
    ),
    "guaranteed_dice_threshold": lambda p, t, u: sk.guaranteed_dice_threshold(
        p, t, u, num_classes=3, max_dice_loss=0.5
    ),
    "SegmentationAccumulator": _seg_acc,
}


_WITH_MASK = {
    "aurc": sk.aurc,
    "e_aurc": sk.e_aurc,
    "augrc": sk.augrc,
    "risk_coverage_curve": sk.risk_coverage_curve,
    "gamma": lambda u, c, *, mask: sk.gamma(u, c, 0.5, mask=mask),
    "selective_accuracy": lambda u, c, *, mask: sk.selective_accuracy(u, c, 0.5, mask=mask),
    "coverage_threshold": lambda u, c, *, mask: sk.coverage_threshold(u, 0.5, mask=mask),
    "uncertainty_margin_loss": sk.uncertainty_margin_loss,
}


_CASES = [(n, "uncertainty") for n in sorted(INSTANCE_FUNCTIONS)]
_CASES += [(n, "correct") for n in sorted(INSTANCE_FUNCTIONS) if n != "coverage_threshold"]
_CASES += [(n, "mask") for n in sorted(_WITH_MASK)]


@pytest.mark.parametrize(("name", "which"), _CASES)
def test_masked_array_refused_instance(name, which):
    under_mask = np.arange(_U.size) == 0
    if which == "mask":
        mask = np.ma.masked_array(np.ones(_U.size, bool), mask=under_mask)
        with pytest.raises(TypeError, match=r"`mask` is a NumPy masked array.*`mask="):
            _WITH_MASK[name](_U, _C, mask=mask)
        return
    args = (_masked(_U), _C) if which == "uncertainty" else (_U, np.ma.masked_array(_C, mask=under_mask))
    with pytest.raises(TypeError, match=rf"`{which}` is a NumPy masked array.*`mask="):
        INSTANCE_FUNCTIONS[name](*args)


@pytest.mark.parametrize("which", ["pred", "label", "uncertainty"])
@pytest.mark.parametrize("per_image", [False, True], ids=["stacked", "sequence"])
@pytest.mark.parametrize("name", sorted(SEGMENTATION_FUNCTIONS))
def test_masked_array_refused_segmentation(name, per_image, which):
    arrays = {"pred": _PRED, "label": _LABEL, "uncertainty": _US}
    arrays[which] = _masked(arrays[which])
    args = [arrays[k] for k in ("pred", "label", "uncertainty")]
    if per_image:
        args = [list(a) for a in args]
    with pytest.raises(TypeError, match=rf"`{which}(\[0\])?` is a NumPy masked array.*`mask=`"):
        SEGMENTATION_FUNCTIONS[name](*args)


@pytest.mark.parametrize("fn", [sk.max_softmax_uncertainty, sk.entropy_uncertainty])
def test_masked_probabilities_refused(fn):
    probs = np.ma.masked_array(np.full((4, 2), 0.5), mask=np.eye(4, 2, dtype=bool))
    with pytest.raises(TypeError, match=r"`probs` is a NumPy masked array"):
        fn(probs)


def test_mask_argument_is_the_way():
    """What the message suggests gives the value of the unmasked instances alone."""
    u = _masked(_U)
    keep = ~np.ma.getmaskarray(u)
    assert sk.aurc(u.filled(0), _C, mask=keep) == sk.aurc(_U[1:], _C[1:])


# --- long doubles wider than float64: refused ---------------------------------------------------------------


_LD = np.longdouble(1) + np.arange(40, dtype=np.longdouble) * np.finfo(np.longdouble).eps


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("name", sorted(INSTANCE_FUNCTIONS.keys() - {"uncertainty_margin_loss"}))
def test_long_double_refused_instance(name):
    assert np.unique(_LD.astype(np.float64)).size == 1  # distinct long doubles, one float64
    with pytest.raises(TypeError, match=r"`uncertainty` has dtype float\d+ \(long double\)"):
        INSTANCE_FUNCTIONS[name](_LD, _C)


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("per_image", [False, True], ids=["stacked", "sequence"])
@pytest.mark.parametrize("name", sorted(SEGMENTATION_FUNCTIONS))
def test_long_double_refused_segmentation(name, per_image):
    u = (np.longdouble(1) + np.arange(_US.size) * np.finfo(np.longdouble).eps).reshape(_US.shape)
    args = [_PRED, _LABEL, u]
    if per_image:
        args = [list(a) for a in args]
    with pytest.raises(TypeError, match=r"`uncertainty(\[0\])?` has dtype float\d+ \(long double\)"):
        SEGMENTATION_FUNCTIONS[name](*args)


# --- huge num_classes, seeds, and the mask of another array library -----------------------------------------


HUGE = [10**6, 2**32, 2**62]


@pytest.mark.parametrize("k", HUGE)
def test_huge_num_classes_refused_everywhere(k):
    skt = pytest.importorskip("selectivekit.adapters.torch")
    pred = np.zeros((2, 4), dtype=np.int64)
    u = np.linspace(0, 1, 8).reshape(2, 4)
    calls = [
        lambda: sk.dice_at_coverage(pred, pred, u, [0.5], num_classes=k),
        lambda: sk.aurc_dice(pred, pred, u, num_classes=k),
        lambda: sk.dice_coverage_curve(pred, pred, u, num_classes=k),
        lambda: sk.streaming.SegmentationAccumulator(num_classes=k),
        lambda: skt.SelectiveDice(num_classes=k),
        lambda: sk.guaranteed_dice_threshold(pred, pred, u, num_classes=k, max_dice_loss=0.1),
        lambda: sk.bootstrap_ci("aurc_dice", pred, pred, u, num_classes=k, n_resamples=10),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="`num_classes` must be <= 65536"):
            call()


BAD_SEEDS = [(-1, ValueError), (1.5, TypeError), ("a", TypeError), (True, TypeError), ([1, 2], TypeError)]


@pytest.mark.parametrize(("seed", "exc"), BAD_SEEDS, ids=["negative", "float", "str", "bool", "list"])
def test_bad_seed_named(seed, exc):
    torch = pytest.importorskip("torch")
    skt = pytest.importorskip("selectivekit.adapters.torch")
    rng = np.random.default_rng(0)
    u = rng.random(20)
    c = rng.random(20) < 0.5
    pred = rng.integers(0, 2, (4, 5))
    calls = [
        lambda: sk.uncertainty_margin_loss(u, c, pairs="sampled", seed=seed),
        lambda: sk.uncertainty_margin_loss(u, c, seed=seed),
        lambda: sk.loss.as_generator(seed),
        lambda: skt.uncertainty_margin_loss(
            torch.from_numpy(u), torch.from_numpy(c), pairs="sampled", seed=seed
        ),
        lambda: skt.UncertaintyMarginLoss(pairs="sampled", seed=seed),
        lambda: sk.bootstrap_ci("aurc", u, c, n_resamples=10, seed=seed),
        lambda: sk.compare_models(
            pred, u.reshape(4, 5), pred, u.reshape(4, 5), pred, num_classes=2, n_resamples=10, seed=seed
        ),
    ]
    for call in calls:
        with pytest.raises(exc, match="`seed` must be"):
            call()


def test_numpy_mask_with_torch_arrays():
    torch = pytest.importorskip("torch")
    u = torch.rand(6, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([True, False, True, True, False, True])
    mask = np.ones(6, dtype=bool)
    for call in (
        lambda: sk.aurc(u, c, mask=mask),
        lambda: sk.selective_split(u, c, 0.5, mask=mask),
        lambda: sk.uncertainty_margin_loss(u, c, mask=mask),
    ):
        with pytest.raises(TypeError, match=r"`mask` is a numpy.ndarray but `uncertainty` is a torch.Tensor"):
            call()
    # a list is not another library's array: it becomes a mask of the arrays' library
    assert sk.aurc(u, c, mask=[True] * 6) == sk.aurc(u, c)
    with pytest.raises(TypeError, match=r"`correct` is a numpy.ndarray but `uncertainty` is a torch.Tensor"):
        sk.aurc(u, c.numpy())
