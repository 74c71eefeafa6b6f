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


# --- every public name is in its module's __all__ and in the API page --------------------------------------

PUBLIC_MODULES = [
    "selectivekit",
    "selectivekit.typing",
    "selectivekit.uncertainty",
    "selectivekit.selective",
    "selectivekit.theorem",
    "selectivekit.risk_coverage",
    "selectivekit.loss",
    "selectivekit.segmentation",
    "selectivekit.segmentation.results",
    "selectivekit.segmentation.images",
    "selectivekit.segmentation.engine",
    "selectivekit.segmentation.metrics",
    "selectivekit.streaming",
    "selectivekit.guarantees",
    "selectivekit.plotting",
    "selectivekit.io",
    "selectivekit.report",
    "selectivekit.cli",
    "selectivekit.testing.strategies",
]
ADAPTER_MODULES = [
    "selectivekit.adapters.torch",
    "selectivekit.adapters.torch_metrics",
    "selectivekit.adapters.torch_sampling",
    "selectivekit.adapters.torch_calibration",
    "selectivekit.adapters.keras",
    "selectivekit.adapters.keras_metrics",
]


def _modules():
    import importlib
    import os

    import pytest

    modules = [importlib.import_module(name) for name in PUBLIC_MODULES]
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    for name in ADAPTER_MODULES:
        framework = "torch" if "torch" in name else "keras"
        pytest.importorskip(framework)
        modules.append(importlib.import_module(name))
    return modules


def _documented():
    """What docs/api.md renders: ids of the objects of every ``::: path`` and every name of a module."""
    import importlib
    import inspect
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    ids, paths = set(), set()
    for path in re.findall(r"^::: (\S+)$", text, flags=re.MULTILINE):
        paths.add(path)
        module_name, _, attr = path.rpartition(".")
        try:
            obj = importlib.import_module(path)
        except ImportError:
            obj = getattr(importlib.import_module(module_name), attr)
        if inspect.ismodule(obj):
            for name in getattr(obj, "__all__", ()):
                paths.add(f"{path}.{name}")
                ids.add(id(getattr(obj, name)))
        else:
            ids.add(id(obj))
    return ids, paths


def test_every_public_name_is_exported_and_documented():
    import inspect

    ids, paths = _documented()
    problems = []
    for module in _modules():
        exported = set(getattr(module, "__all__", ()))
        for name, obj in vars(module).items():
            own = getattr(obj, "__module__", None) == module.__name__
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and own:
                if name not in exported:
                    problems.append(f"{module.__name__}.{name} is public but not in __all__")
        for name in exported:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            if id(obj) not in ids and f"{module.__name__}.{name}" not in paths:
                problems.append(f"{module.__name__}.{name} is not on docs/api.md")
    assert not problems, "\n".join(problems)
