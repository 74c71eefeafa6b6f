"""``python -m reference_models`` caps PyTorch's CPU kernels at AVX2 before torch is imported.

The unit tests check which variables `pin_cpu_isa` sets against a reference written here; the subprocess
tests run the real entry point in a fresh interpreter and ask torch and oneDNN which instruction set they
ended up with, against a plain interpreter without our entry point as the reference.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reference_models.cpu_isa import CHOICE_VARIABLE, PINNED, pin_cpu_isa

ROOT = Path(__file__).resolve().parents[2]
USER_VALUES = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
ALL_SUBSETS = [set(c) for r in range(len(PINNED) + 1) for c in itertools.combinations(PINNED, r)]


@pytest.mark.parametrize("user_set", ALL_SUBSETS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("choice", [None, "avx2", " AVX2 ", "native", "Native"])
def test_pin_sets_what_the_user_did_not(user_set, choice):
    env = {"UNRELATED": "1"} | {name: USER_VALUES[name] for name in user_set}
    if choice is not None:
        env[CHOICE_VARIABLE] = choice
    before = dict(env)

    result = pin_cpu_isa(env)

    pins = choice is None or choice.strip().lower() == "avx2"
    expected = dict(before)
    documented = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
    for name, value in documented.items():
        if pins and name not in user_set:
            expected[name] = value
    assert env == expected  # a value the user set is never replaced, nothing else is touched
    assert result == {name: expected[name] for name in PINNED if name in expected}


@pytest.mark.parametrize("choice", ["avx512", "", "fast", "avx2,native"])
def test_an_unknown_choice_is_refused_naming_the_variable(choice):
    env = {CHOICE_VARIABLE: choice}
    with pytest.raises(ValueError, match=rf"^`{CHOICE_VARIABLE}` must be avx2 or native, got {choice!r}\.$"):
        pin_cpu_isa(env)
    assert env == {CHOICE_VARIABLE: choice}  # refused before anything was set


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in PINNED and k != CHOICE_VARIABLE}
    return keep | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | extra


def test_an_unknown_choice_ends_the_command_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "reference_models", "--help"],
        cwd=ROOT, env=_clean_env(**{CHOICE_VARIABLE: "fast"}), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"python -m reference_models: error: `{CHOICE_VARIABLE}` must be avx2 or native, got 'fast'."
    ]


# What torch and oneDNN report after the entry point ran: `--help` returns before any torch code, then a
# batched convolution makes oneDNN pick its kernels (ONEDNN_VERBOSE prints the instruction set it chose).
_PROBE = """
import runpy, sys
if sys.argv[1] == "entry":
    sys.argv = ["reference_models", "--help"]
    try:
        runpy.run_module("reference_models", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
import torch
torch.nn.functional.conv2d(torch.ones(2, 4, 12, 12), torch.ones(4, 4, 3, 3))
print("aten:" + torch.backends.cpu.get_cpu_capability())
"""


def _probe(via_entry: bool, **extra: str) -> tuple[str, str]:
    env = _clean_env(ONEDNN_VERBOSE="1", **extra)
    argv = [sys.executable, "-c", _PROBE, "entry" if via_entry else "plain"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    aten = re.search(r"^aten:(.+)$", done.stdout, re.MULTILINE)
    onednn = re.search(r"^(?:onednn|dnnl)_verbose,.*info,cpu,isa:(.+)$", done.stdout, re.MULTILINE)
    assert aten is not None and onednn is not None, done.stdout[-2000:]
    return aten.group(1).strip(), onednn.group(1).strip()


@pytest.fixture(scope="module")
def native() -> tuple[str, str]:
    """What this CPU gives a plain interpreter (no entry point, no variables)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the pin concerns x86-64 CPUs")
    aten, onednn = _probe(via_entry=False)
    if aten not in ("AVX2", "AVX512"):
        pytest.skip(f"this CPU has no AVX2 (PyTorch's kernels: {aten})")
    return aten, onednn


def test_the_entry_point_caps_torch_and_onednn_at_avx2_before_torch_is_imported(native):
    assert _probe(via_entry=True) == ("AVX2", "Intel AVX2")
    # the same variables in a plain interpreter give the same: the entry point set them, nothing else
    assert _probe(via_entry=False, **PINNED) == ("AVX2", "Intel AVX2")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({CHOICE_VARIABLE: "native"}, None),  # None: what the plain interpreter got
        ({"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}, ("DEFAULT", "Intel SSE4.1")),
    ],
    ids=["native", "user-values"],
)
def test_the_users_choice_wins(native, extra, expected):
    assert _probe(via_entry=True, **extra) == (expected or native)
