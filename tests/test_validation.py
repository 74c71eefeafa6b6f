"""SPEC section 7: every bad input to the core metrics raises a clear error naming the argument."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import selectivekit as sk

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
