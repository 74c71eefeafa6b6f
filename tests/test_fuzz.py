"""Property-based fuzzing of the public API: bad and extreme inputs keep the error contract.

Every call either returns a correct value (finite where the definition is finite, equal to a slow reference
written here where that is cheap) or raises ``ValueError``/``TypeError`` whose message names an argument in
backticks. Never another exception, never a warning (the suite turns warnings into errors), never a NaN
outside the documented places (``gamma`` with nothing referred).

Inputs start from a valid call; one argument is then replaced by a mutation: NaN, infinities, huge or
subnormal values, other dtypes (float16, int8, uint8, bool, complex, strings, objects), empty, 0-d, 2-d or
shorter arrays, ``None``, nested lists, plain scalars, PyTorch tensors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selectivekit as sk

torch = pytest.importorskip("torch")

# bounded for the suite (well under a minute on a loaded machine); SELECTIVEKIT_FUZZ_EXAMPLES=2000 with
# HYPOTHESIS_PROFILE=dev explores further
FUZZ = settings(max_examples=int(os.environ.get("SELECTIVEKIT_FUZZ_EXAMPLES", "60")), deadline=None)

ARRAY_MUTATIONS = [
    "none", "none", "none", "nan", "inf", "neg_inf", "huge", "subnormal", "negative", "empty", "shorter",
    "2d", "0d", "float16", "float32", "int8", "uint8", "bool", "complex", "string", "object", "None",
    "nested_list", "list", "scalar", "torch", "huge_int",
]  # fmt: skip
SCALAR_MUTATIONS = [
    None, True, "0.5", math.nan, math.inf, -math.inf, -1, 0, 0.0, 1e-300, 1.5, 2**70, -(2**62),
    np.float32(0.9), np.int64(3), 1j, [0.5], (),
]  # fmt: skip


def _mutate(x: np.ndarray, how: str, where: int) -> Any:
    """``x`` with one thing wrong (or extreme); ``where`` picks the position of a changed value."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = np.array(x, dtype=np.float64 if x.dtype.kind == "f" else x.dtype).reshape(-1)
        i = where % max(flat.size, 1)
        as_float = flat.astype(np.float64)
        if how == "none":
            return x
        if how in ("nan", "inf", "neg_inf", "huge", "subnormal", "negative"):
            value = {"nan": np.nan, "inf": np.inf, "neg_inf": -np.inf, "huge": 1e308,
                     "subnormal": 5e-324, "negative": -3.0}[how]  # fmt: skip
            if flat.size:
                as_float[i] = value
            return as_float.reshape(x.shape)
        casts = {"float16": np.float16, "float32": np.float32, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_, "complex": np.complex128, "string": np.str_, "object": object}  # fmt: skip
        if how in casts:
            return x.astype(casts[how])
        if how == "empty":
            return x[:0]
        if how == "shorter":
            return x[:-1] if x.shape and x.shape[0] > 1 else x[:0]
        if how == "2d":
            return np.stack([x, x])
        if how == "0d":
            return x.reshape(-1)[0] if x.size else np.float64(0.5)
        if how == "None":
            return None
        if how == "nested_list":
            return [x.tolist(), [x.tolist()]]
        if how == "list":
            return x.tolist()
        if how == "scalar":
            return 0.5
        if how == "torch":
            return torch.from_numpy(np.ascontiguousarray(x))
        if how == "huge_int":
            out = flat.astype(np.int64)
            if out.size:
                out[i] = 2**62
            return out.reshape(x.shape)
    raise AssertionError(how)


def _contract(call):
    """Run ``call``; return its value, or ``None`` after an allowed error. Fails on anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call()
        except (ValueError, TypeError) as exc:
            assert re.search(r"`[^`\s]+`", str(exc)), f"the message names no argument: {exc!r}"
            return None


def _scalars(value: Any, path: str = "result"):
    """Every float inside a result (dataclasses, named tuples, tuples, lists, arrays), with its path."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _scalars(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, (tuple, list)):
        names = getattr(value, "_fields", None)
        for i, v in enumerate(value):
            yield from _scalars(v, f"{path}.{names[i]}" if names else f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _scalars(v, f"{path}[{k!r}]")
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if arr.dtype.kind in "fc":
            for v in arr.reshape(-1).tolist():
                yield path, float(v)
    elif isinstance(value, (float, np.floating)):
        yield path, float(value)


def _no_silent_nan(result: Any, allowed: tuple[str, ...] = (), minus_inf: tuple[str, ...] = ()) -> None:
    """No NaN outside the fields ``allowed``; no infinity, except ``-inf`` in the fields ``minus_inf``."""
    for path, v in _scalars(result):
        field = path.rsplit(".", 1)[-1]
        if math.isnan(v):
            assert field in allowed, f"NaN at {path}"
        elif not math.isfinite(v):
            assert v == -math.inf and field in minus_inf, f"infinite value at {path}: {v}"


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _instances(data, n_max: int = 12):
    n = data.draw(st.integers(1, n_max), label="n")
    u = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0, 3.0, -2.0]),
                                      min_size=n, max_size=n), label="u"))  # fmt: skip
    c = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="correct"))
    return u, c


def _mutated(data, x: np.ndarray, label: str) -> Any:
    how = data.draw(st.sampled_from(ARRAY_MUTATIONS), label=f"{label} mutation")
    return _mutate(x, how, data.draw(st.integers(0, 50), label=f"{label} position"))


def _instance_args(data, u: np.ndarray, c: np.ndarray) -> tuple[str, dict[str, Any]]:
    """Which input to break (or an option, or none) and the ``uncertainty``/``correct``/``mask`` arguments."""
    target = data.draw(st.sampled_from(["uncertainty", "correct", "mask", "option", "none"]), label="target")
    args = {"uncertainty": u, "correct": c, "mask": None}
    if target in ("uncertainty", "correct"):
        args[target] = _mutated(data, args[target], target)
    if target == "mask":
        args["mask"] = _mutated(data, np.ones_like(c), "mask")
    return target, args


def _aurc_reference(u: np.ndarray, c: np.ndarray, generalized: bool) -> float:
    u, wrong = u.astype(np.float64).reshape(-1), ~c.reshape(-1)
    n, area, prev = u.size, 0.0, 0.0
    for t in np.unique(u):
        acc = u <= t
        risk = wrong[acc].sum() / (n if generalized else acc.sum())
        area += (acc.sum() / n - prev) * risk
        prev = acc.sum() / n
    return area


# --- instance metrics ---------------------------------------------------------------------------------------

COVERAGE_METRICS = {
    "selective_split": sk.selective_split,
    "selective_accuracy": sk.selective_accuracy,
    "gamma": sk.gamma,
    "check_theorem1": sk.check_theorem1,
    "risk_at_coverage": sk.risk_at_coverage,
}


@FUZZ
@given(data=st.data())
def test_fuzz_instance_metrics(data):
    u, c = _instances(data)
    target, args = _instance_args(data, u, c)
    option = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 0.5, 1.0])) if target == "option" else 0.5
    name = data.draw(st.sampled_from(["aurc", "augrc", "e_aurc", "curve", "coverage_threshold",
                                      "coverage_at_risk", *COVERAGE_METRICS]), label="function")  # fmt: skip
    uu, cc, mask = args["uncertainty"], args["correct"], args["mask"]
    calls = {
        "aurc": lambda: sk.aurc(uu, cc, mask=mask),
        "augrc": lambda: sk.augrc(uu, cc, mask=mask),
        "e_aurc": lambda: sk.e_aurc(uu, cc, mask=mask),
        "curve": lambda: sk.risk_coverage_curve(uu, cc, mask=mask),
        "coverage_threshold": lambda: sk.coverage_threshold(uu, option, mask=mask),
        "coverage_at_risk": lambda: sk.coverage_at_risk(uu, cc, option, mask=mask),
    }
    calls.update({k: (lambda f=f: f(uu, cc, option, mask=mask)) for k, f in COVERAGE_METRICS.items()})
    result = _contract(calls[name])
    if result is None:
        return
    # gamma is NaN when nothing is referred (the field of check_theorem1's result, or gamma's own value);
    # the assertion below checks that this is the only case
    allowed = ("gamma", "rhs", "gamma_low", "gamma_high") if name != "aurc" else ()
    _no_silent_nan(result, allowed=(*allowed, "result") if name == "gamma" else allowed)
    if name in ("aurc", "augrc") and mask is None:
        ref = _aurc_reference(_np(uu), _np(cc).astype(bool), name == "augrc")
        assert result == pytest.approx(ref, rel=1e-9, abs=1e-12)
    if name == "gamma" and math.isnan(result):
        assert sk.coverage_threshold(uu, option, mask=mask)[1] == 1.0  # NaN only when nothing is referred


@FUZZ
@given(
    psi_1=st.sampled_from([0.0, 0.3, 1.0, *SCALAR_MUTATIONS]),
    gamma=st.sampled_from([0.0, 0.6, 1.0, *SCALAR_MUTATIONS]),
    coverage=st.sampled_from([0.5, 1.0, 1e-9, *SCALAR_MUTATIONS]),
)
def test_fuzz_theorem_scalars(psi_1, gamma, coverage):
    for call in (
        lambda: sk.psi_c_from(psi_1, gamma, coverage),
        lambda: sk.dpsi_dgamma(coverage),
        lambda: sk.dpsi_dpsi1(coverage),
    ):
        result = _contract(call)
        if result is not None:
            _no_silent_nan(result)
    bounds = _contract(lambda: sk.gamma_bounds(psi_1, coverage))
    if bounds is not None:  # documented: both NaN at coverage 1 (nothing referred, gamma undefined)
        _no_silent_nan(bounds, allowed=("result[0]", "result[1]") if coverage == 1 else ())
        assert 0 <= bounds[0] <= 1 or coverage == 1
    value = _contract(lambda: sk.psi_c_from(psi_1, gamma, coverage))
    if value is not None:
        p1, g, c = float(psi_1), float(gamma), float(coverage)  # reference in float64 (gamma: float32 too)
        expected = p1 if c == 1 else (p1 - (1 - g) * (1 - c)) / c
        assert value == pytest.approx(expected)


# --- uncertainty from model outputs ------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_fuzz_uncertainty_functions(data):
    k = data.draw(st.integers(1, 4), label="k")
    n = data.draw(st.integers(1, 5), label="n")
    logits = np.asarray(data.draw(st.lists(st.floats(-30, 30), min_size=n * k, max_size=n * k))).reshape(n, k)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    axis = data.draw(st.sampled_from([1, -1, 0, 2, -3, 1.0, "1", None]), label="axis")
    name = data.draw(st.sampled_from(["msp", "entropy", "logits", "correctness"]), label="function")
    x = {"msp": probs, "entropy": probs, "logits": logits, "correctness": np.argmax(probs, axis=1)}[name]
    x = _mutated(data, x, "input")
    calls = {
        "msp": lambda: sk.max_softmax_uncertainty(x, axis=axis),
        "entropy": lambda: sk.entropy_uncertainty(x, axis=axis),
        "logits": lambda: sk.uncertainty_from_logits(x, axis=axis),
        "correctness": lambda: sk.correctness(x, np.argmax(logits, axis=1)),
    }
    result = _contract(calls[name])
    if result is None:
        return
    _no_silent_nan(result)
    half = _np(x).dtype == np.float16  # probabilities rounded to float16 need not sum to 1 within 2e-6
    xn = _np(x).astype(np.float64) if name != "correctness" else _np(x)
    if name == "msp":
        ref = 1 - xn.max(axis=axis)
        np.testing.assert_allclose(_np(result), ref, atol=1e-3 if half else 2e-6)
    elif name == "logits":
        z = xn - xn.max(axis=axis, keepdims=True)
        ref = 1 - 1 / np.exp(z).sum(axis=axis)
        np.testing.assert_allclose(_np(result), ref, atol=1e-6)
    elif name == "correctness":
        np.testing.assert_array_equal(_np(result), xn.astype(np.int64) == np.argmax(logits, axis=1))


# --- the loss -----------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_fuzz_margin_loss(data):
    u, c = _instances(data, 10)
    target, args = _instance_args(data, u, c)
    options = {"margin": 0.1, "reduction": "mean", "pairs": "exact", "seed": 0}
    if target == "option":
        key = data.draw(st.sampled_from(["margin", "reduction", "pairs", "seed", "n_wrong"]), label="option")
        options[key] = data.draw(st.sampled_from([*SCALAR_MUTATIONS, "sum", "sampled", 1e30]), label="value")
    uu, cc, mask = args["uncertainty"], args["correct"], args["mask"]
    result = _contract(lambda: sk.uncertainty_margin_loss(uu, cc, mask=mask, **options))
    if result is None:
        return
    un = _np(uu)
    work = un.astype(np.float32 if un.dtype != np.float64 else np.float64).astype(np.float64).reshape(-1)
    cn = _np(cc).astype(bool).reshape(-1)
    keep = np.ones_like(cn) if mask is None else _np(mask).reshape(-1)
    m = float(options["margin"])
    d = work[cn & keep][None, :] - work[~cn & keep][:, None] + m
    try:
        total = math.fsum(d[d > 0].tolist()) if np.isfinite(d).all() else math.inf
    except OverflowError:  # the exact sum is beyond float64
        total = math.inf
    n_pairs = d.size
    if options["pairs"] == "exact":
        ref = total if options["reduction"] == "sum" else (total / n_pairs if n_pairs else 0.0)
        if abs(ref) <= np.finfo(_np(result).dtype).max:
            _no_silent_nan(result)
            assert float(_np(result)) == pytest.approx(ref, rel=1e-5, abs=1e-6)
        else:  # the true value is beyond the result's dtype: it rounds to inf, and nothing else
            assert float(_np(result)) == math.inf
    elif math.isfinite(total):
        _no_silent_nan(result)
        assert float(_np(result)) >= 0


# --- segmentation and guarantees ---------------------------------------------------------------------------


def _images(data):
    shape = (data.draw(st.integers(1, 3), label="n_images"), data.draw(st.integers(1, 4), label="voxels"))
    size = shape[0] * shape[1]
    pred = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))).reshape(shape)
    label = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))).reshape(shape)
    u = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), min_size=size,
                                      max_size=size))).reshape(shape)  # fmt: skip
    return pred, label, u


def _dice_reference(pred, label, u, threshold, k) -> float:
    """Mean over images of the mean Dice of classes 1..k-1 after referring ``u > threshold``."""
    scores = []
    for p, t, v in zip(pred, label, u, strict=True):
        after = np.where(v > threshold, t, p)
        per = []
        for cls in range(1, k):
            tp = np.sum((after == cls) & (t == cls))
            den = np.sum(after == cls) + np.sum(t == cls)
            per.append(1.0 if den == 0 else 2 * tp / den)
        scores.append(np.mean(per))
    return float(np.mean(scores))


@FUZZ
@given(data=st.data())
def test_fuzz_segmentation_and_guarantees(data):
    pred, label, u = _images(data)
    target = data.draw(st.sampled_from(["pred", "label", "uncertainty", "num_classes", "option", "none"]))
    args = {"pred": pred, "label": label, "uncertainty": u}
    if target in args:
        args[target] = _mutated(data, args[target], target)
    k = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 2**62, 10**6, 1])) if target == "num_classes" else 3
    option = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 0.5])) if target == "option" else 0.5
    p, t, v = args["pred"], args["label"], args["uncertainty"]
    correct = p if target == "pred" else pred == label  # the instance functions get `correct` from pred
    seed = option if target == "option" else 0
    name = data.draw(st.sampled_from(["dice_at_coverage", "curve", "aurc_dice", "dice_threshold",
                                      "risk_threshold", "bootstrap"]), label="function")  # fmt: skip
    calls = {
        "dice_at_coverage": lambda: sk.dice_at_coverage(p, t, v, option, num_classes=k),
        "curve": lambda: sk.dice_coverage_curve(p, t, v, num_classes=k),
        "aurc_dice": lambda: sk.aurc_dice(p, t, v, num_classes=k),
        "dice_threshold": lambda: sk.guaranteed_dice_threshold(p, t, v, num_classes=k, max_dice_loss=option),
        "risk_threshold": lambda: sk.guaranteed_risk_threshold(v, correct, target_risk=option, delta=0.1),
        "bootstrap": lambda: sk.bootstrap_ci("aurc", v, correct, n_resamples=20, seed=seed),
    }
    result = _contract(calls[name])
    if result is None:
        return
    # documented: a guaranteed threshold is -inf when no threshold qualifies (everything is referred), and
    # then the selective risk of the accepted instances (none) and its bound are NaN
    refers_all = getattr(result, "refers_all", False)
    _no_silent_nan(
        result,
        allowed=("selective_risk", "risk_bound") if refers_all else (),
        minus_inf=("threshold",) if refers_all else (),
    )
    if name == "dice_at_coverage":
        r = result[0]
        ref = _dice_reference(_np(p).astype(np.int64), _np(t).astype(np.int64), _np(v), r.threshold, k)
        assert r.mean == pytest.approx(ref, rel=1e-12, abs=1e-12)
