"""The public API of SPEC section 8: names, completeness of __all__, signature conventions."""

from __future__ import annotations

import inspect

import selectivekit as sk

CORE = [
    "max_softmax_uncertainty",
    "entropy_uncertainty",
    "uncertainty_from_logits",
    "correctness",
    "coverage_threshold",
    "selective_split",
    "selective_accuracy",
    "gamma",
    "psi_c_from",
    "gamma_bounds",
    "dpsi_dgamma",
    "dpsi_dpsi1",
    "check_theorem1",
    "risk_coverage_curve",
    "aurc",
    "e_aurc",
    "augrc",
    "risk_at_coverage",
    "coverage_at_risk",
]


def test_spec_names_exported():
    missing = [name for name in CORE if name not in sk.__all__]
    assert not missing


def test_all_is_sorted_and_complete():
    assert sk.__all__ == sorted(sk.__all__)
    public = {
        name
        for name, obj in vars(sk).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
    }
    assert public <= set(sk.__all__)
    for name in sk.__all__:
        assert hasattr(sk, name), name


def test_array_functions_follow_signature_convention():
    for name in sk.__all__:
        obj = getattr(sk, name)
        if not inspect.isfunction(obj):
            continue
        params = inspect.signature(obj).parameters
        if "xp" in params:
            assert list(params)[-1] == "xp" and params["xp"].kind is inspect.Parameter.KEYWORD_ONLY, name
            assert params["xp"].default is None, name
