"""The prepared GPU check runs on the CPU at a tiny size, and its comparison catches a wrong value."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_cpu_tiny_mode_passes_every_check():
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--repeats", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch-cpu: metrics equal to NumPy: True" in result.stdout
    assert "exact equal to NumPy: True" in result.stdout
    assert "all checks passed: True" in result.stdout


def test_compare_flags_each_wrong_value():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    u, correct = module.scores(500)
    logits = np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype(np.float32)
    data = (u, correct, np.round(u, 2), logits)
    reference = module.reference_values(*data)
    assert all(module.compare(dict(reference), reference).values())
    for key, wrong in [("aurc", reference["aurc"] + 1e-6), ("u_logits", reference["u_logits"] * 1.001)]:
        ok = module.compare({**reference, key: wrong}, reference)
        assert not ok[key] and sum(ok.values()) == len(ok) - 1
