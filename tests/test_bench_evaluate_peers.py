"""The peer benchmark at a tiny size: it runs end to end, and its agreement check passes on agreeing Dice
and fails when one program's Dice differ."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_evaluate_peers.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_evaluate_peers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH.parent))


def _dice_by_hand(data: Path, classes: int) -> dict[int, float]:
    """Mean over cases of each class's Dice, counted voxel by voxel with nibabel."""
    import nibabel

    sums = dict.fromkeys(range(1, classes), 0.0)
    paths = sorted((data / "pred").glob("*.nii.gz"))
    for path in paths:
        pred = np.asarray(nibabel.load(path).dataobj)
        label = np.asarray(nibabel.load(data / "label" / path.name).dataobj)
        for c in sums:
            both = np.count_nonzero((pred == c) & (label == c))
            sums[c] += 2 * both / (np.count_nonzero(pred == c) + np.count_nonzero(label == c))
    return {c: s / len(paths) for c, s in sums.items()}


def test_check_agreement_fails_when_dice_differ(bench):
    same = {1: 0.9, 2: 0.8}
    assert bench.check_agreement({"a": same, "b": dict(same)}, "a", 1e-6) == []
    problems = bench.check_agreement({"a": same, "b": {1: 0.9, 2: 0.8 + 1e-4}}, "a", 1e-6)
    assert len(problems) == 1 and "class 2" in problems[0]
    assert bench.check_agreement({"a": same, "b": {1: 0.9}}, "a", 1e-6)[0].startswith("b: classes")
    assert bench.check_agreement({"a": same, "b": {1: 0.9, 2: float("nan")}}, "a", 1e-6)


@pytest.mark.slow
def test_tiny_run_agrees_with_peers_and_by_hand(bench, tmp_path):
    pytest.importorskip("nibabel")
    classes = 3
    data = tmp_path / "data"
    bench.write_data(data, 2, 12, classes)
    results, problems = bench.benchmark(data, classes, 1, 1e-6, workers=(1,))  # 2 workers: see test_workers
    assert problems == []
    expected = _dice_by_hand(data, classes)
    for tool, (seconds, _peak, dice) in results.items():
        assert seconds > 0
        assert dice == pytest.approx(expected, abs=1e-6), tool
    # one prediction changed after the runs: its Dice, counted again, no longer agree, and the check says so
    import nibabel

    path = data / "pred" / "case_000.nii.gz"
    pred = np.asarray(nibabel.load(path).dataobj).copy()
    pred[pred == 1] = 2
    nibabel.save(nibabel.Nifti1Image(pred, np.eye(4)), path)
    moved = _dice_by_hand(data, classes)
    problems = bench.check_agreement({"ours": results[bench.OURS_1][2], "moved": moved}, "ours", 1e-6)
    assert [p.split(" mean Dice")[0] for p in problems] == ["moved: class 1", "moved: class 2"]


def test_cli_refuses_bad_sizes():
    result = subprocess.run(
        [sys.executable, str(BENCH), "--cases", "0"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "--cases must be >= 1" in result.stderr
