"""``selectivekit evaluate --workers N``: files read and accumulated in N processes give the report of one.

The reference is the same command with one process (``--workers 1``, the code path without workers), and
the accumulator fed every image in one process; the results must be identical, byte for byte.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import threading
from concurrent.futures import process as futures_process
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selectivekit import _parallel
from selectivekit import io as skio
from selectivekit.cli import main
from selectivekit.streaming import SegmentationAccumulator
from tests.conftest import evaluate_argv, noisy_cases, write_case_folders

K = 3
SHAPES = [(9, 8, 7), (5, 6, 4), (12, 3, 5), (7, 7, 7), (4, 9, 6), (8, 5, 3), (6, 6, 10)]


def _write(root: Path, *, bad: tuple[int, ...] = (), ties: int | None = None) -> dict[str, Path]:
    preds, labels, us = noisy_cases(7, SHAPES, num_classes=K, error_rate=0.2, noise=0.5, wrong_class="next")
    if ties is not None:  # heavy ties: a handful of distinct values over every case
        us = [(np.round(u * ties) / ties).astype(np.float32) for u in us]
    for i in bad:
        labels[i][0, 0, 0] = K + i  # outside [0, K)
    return write_case_folders(root, preds, labels, us, stem="case_{i}")


# continuous scores and heavy ties, exact (each worker sorts its cases, the parent merges the sorted runs in
# as many threads, cut here however small the runs are); a budget that each worker's cases fit and all of
# them do not (the grid built from the sorted cases)
@pytest.mark.parametrize("ties", [None, 3])
@pytest.mark.parametrize("budget", [[], ["--max-memory", "4000"]])
def test_workers_give_the_report_of_one_process_byte_for_byte(tmp_path, monkeypatch, ties, budget):
    from selectivekit.streaming import _sorted

    monkeypatch.setattr(_sorted, "_MIN_PER_THREAD", 1)
    folders = _write(tmp_path / "data", ties=ties)
    outputs = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        assert main(evaluate_argv(folders, out, "--workers", str(workers), *budget)) == 0
        outputs[workers] = out
    reference = (outputs[1] / "report.json").read_bytes()
    path = json.loads(reference)
    assert (path["path"], path["voxel_errors"]["path"]) == (
        ("grid", "grid") if budget else ("exact", "exact")
    )
    with np.load(outputs[1] / "curve.npz") as data:
        curve = {key: data[key] for key in data.files}
    for workers in (2, 3):
        assert (outputs[workers] / "report.json").read_bytes() == reference
        assert (outputs[workers] / "report.md").read_bytes() == (outputs[1] / "report.md").read_bytes()
        with np.load(outputs[workers] / "curve.npz") as data:
            assert sorted(data.files) == sorted(curve)
            for key, value in curve.items():
                np.testing.assert_array_equal(data[key], value)


class _DiceOnly:
    """The accumulator contract of ``accumulate_in_processes`` (``add_case``, ``merge``) over the Dice."""

    def __init__(self):
        self.inner = SegmentationAccumulator(num_classes=K)

    def add_case(self, name, arrays):
        self.inner.update(arrays.pred, arrays.label, arrays.uncertainty)

    def merge(self, other):
        self.inner.merge(other.inner)
        return self


def test_accumulate_in_processes_equals_one_accumulator(tmp_path):
    folders = _write(tmp_path / "data")
    cases = skio.pair_files(
        {"pred": folders["pred"], "label": folders["label"], "uncertainty": folders["unc"]}
    )
    options = {"num_classes": K}
    one = SegmentationAccumulator(num_classes=K)
    for case in cases:
        one.update(*skio.load_case(case, **options))
    done = []
    names, voxels, merged = _parallel.accumulate_in_processes(
        cases, options, _DiceOnly, workers=2, progress=done.append
    )
    merged = merged.inner
    assert names == [c.name for c in cases]
    assert voxels == [int(np.prod(s)) for s in SHAPES]
    assert sum(done) == len(cases)
    a, b = one.compute(), merged.compute()
    for field in ("coverage", "mean_dice", "threshold"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
    assert merged.aurc_dice() == one.aurc_dice()
    for ra, rb in zip(one.dice_at_coverage([0.9, 0.5]), merged.dice_at_coverage([0.9, 0.5]), strict=True):
        np.testing.assert_array_equal(rb.per_image_dice, ra.per_image_dice)
        np.testing.assert_array_equal(rb.per_image_coverage, ra.per_image_coverage)


def test_an_interrupt_leaves_no_pool_thread_running(tmp_path):
    """Ctrl-C in the parent while chunks run: the workers are stopped and the pool's manager thread has
    ended (its wake-up pipe closed) before the interrupt goes on, so that nothing of the pool is left for
    the interpreter's exit to write to (which printed a "Bad file descriptor" traceback)."""
    folders = _write(tmp_path / "data")
    cases = skio.pair_files(
        {"pred": folders["pred"], "label": folders["label"], "uncertainty": folders["unc"]}
    )

    def interrupt(_n_cases):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _parallel.accumulate_in_processes(cases, {"num_classes": K}, _DiceOnly, workers=2, progress=interrupt)
    managers = [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]
    assert not [t for t in managers if t.is_alive()]
    wakeups = list(futures_process._threads_wakeups.values())
    assert all(wakeup._closed for wakeup in wakeups)
    assert not multiprocessing.active_children()


def test_workers_report_the_first_bad_case_as_one_process_does(tmp_path, capsys):
    folders = _write(tmp_path / "data", bad=(2, 5))
    messages = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        assert main(evaluate_argv(folders, out, "--workers", str(workers))) == 1
        assert not out.exists()
        messages.append(capsys.readouterr().err)
    assert "case_2.nii.gz" in messages[0]
    assert "holds labels outside [0, 3) for --num-classes 3" in messages[0]
    assert messages[1] == messages[0]


@pytest.mark.parametrize("flag", [["--exact"], ["--ci", "0.9"]])
def test_workers_refuse_what_needs_one_process(tmp_path, capsys, flag):
    folders = _write(tmp_path / "data")
    assert main(evaluate_argv(folders, tmp_path / "out", "--workers", "2", *flag)) == 2
    assert "`--workers` applies to the streaming evaluation only" in capsys.readouterr().err
    assert main(evaluate_argv(folders, tmp_path / "out", "--workers", "0")) == 2
    assert "`--workers` must be an integer >= 1" in capsys.readouterr().err


def test_accumulate_in_processes_argument_errors():
    make = functools.partial(SegmentationAccumulator, num_classes=K)
    with pytest.raises(ValueError, match=r"`workers` must be an integer >= 1, got 0"):
        _parallel.accumulate_in_processes([], {}, make, workers=0)
    with pytest.raises(ValueError, match=r"`cases` must hold at least one case"):
        _parallel.accumulate_in_processes([], {}, make, workers=2)


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 500), st.integers(1, 64))
def test_chunks_cover_the_cases_in_order(n_items, n_workers):
    parts = _parallel.chunks(n_items, n_workers)
    assert [i for part in parts for i in part] == list(range(n_items))
    assert all(len(part) > 0 for part in parts)
    assert len(parts) <= n_workers * 4
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_workers_with_a_saved_shard_state_merge_to_the_same_report(tmp_path):
    folders = _write(tmp_path / "data")
    reports = []
    for workers in (1, 2):
        state = tmp_path / f"state_w{workers}.npz"
        argv = evaluate_argv(folders, tmp_path / "unused", "--workers", str(workers), "--shard", "0/1")
        assert main([*argv, "--save-state", str(state)]) == 0
        out = tmp_path / f"merged_w{workers}"
        assert main(["merge", str(state), "--out", str(out)]) == 0
        reports.append((out / "report.json").read_bytes())
    assert reports[1] == reports[0]


def test_beside_runs_in_a_second_thread_only_with_a_budget_and_passes_errors_on():
    """``beside``: one thread budget runs the function before the block, in this thread; two run it in
    another thread while the block runs (the function here waits for the block to start, so a run before
    the block would time out); an error of the function comes out of the block, and the budget ends with
    its block."""
    from selectivekit._lib import beside, thread_budget, thread_count

    started = threading.Event()
    seen = []

    def job(x, *, y):
        seen.append((threading.current_thread() is threading.main_thread(), thread_count()))
        return x + y

    with beside(job, 1, y=2) as done:
        assert done.result() == 3
    assert seen == [(True, 1)]

    def waits_for_the_block():
        assert started.wait(timeout=30), "the block did not run while the function did"
        return job(3, y=4)

    with thread_budget(2):
        assert thread_count() == 2
        with beside(waits_for_the_block) as done:
            started.set()
        assert done.result() == 7
    assert seen[1] == (False, 2)  # the thread sees the caller's budget
    assert thread_count() == 1

    def fails():
        raise ValueError("from the thread")

    with thread_budget(2), pytest.raises(ValueError, match="from the thread"), beside(fails):
        pass


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_a_sorted_case_is_sorted_once_for_the_dice_and_the_voxel_errors(dtype):
    """In a worker, the voxel errors' sort of a case, by (u, correct), gives the Dice accumulator its sorted
    ``u`` (no second sort), and the sorted image equals the one sorted on its own; where the errors' order
    has no key (float64 below 0) the Dice sorts the case itself."""
    from selectivekit.cli._evaluation import CaseAccumulator
    from selectivekit.cli._voxel_metrics import VoxelMetrics
    from selectivekit.streaming._sorted import sort_image

    preds, labels, us = noisy_cases(
        3, [(9, 8, 7), (5, 6, 7), (4, 4, 4)], num_classes=K, error_rate=0.2, noise=0.5
    )
    us = [(u - 0.5).astype(dtype) if dtype == np.float64 else u.astype(dtype) for u in us]
    # zeros, and -0.0 in the third case (equal values: the errors' key reads it as +0.0, and NumPy's own sort
    # does not keep the sign of zeros either, so the test compares values)
    us[1].flat[:5] = 0.0
    us[2].flat[:5] = 0.0
    us[2].flat[5:9] = -0.0
    both = CaseAccumulator(
        SegmentationAccumulator(num_classes=K),
        VoxelMetrics(K, False, with_probs=False, max_memory=1 << 30, grid="bfloat16"),
        sort=True,
    )
    for i, (p, t, u) in enumerate(zip(preds, labels, us, strict=True)):
        both.add_case(f"case_{i}", skio.CaseArrays(p, t, u, None))
        image = both.segmentation._raw[-1]
        alone = sort_image(p.ravel(), t.ravel(), u.ravel(), K)
        for field in ("sorted_u", "wrong_u", "wrong_pred", "wrong_label", "label_count", "pred_count"):
            np.testing.assert_array_equal(getattr(image, field), getattr(alone, field))
        errors = both.voxel_metrics.errors
        shared = errors._last_sorted_u() is not None and np.shares_memory(image.sorted_u, errors._u[-1])
        # float64 with negative values has no bit key: the errors stay unsorted, the Dice sorts on its own
        assert shared == (dtype != np.float64)


def test_the_parent_reads_the_voxel_errors_key_from_the_dice_merge():
    """After the workers (accumulators built and sorted case by case, pickled, merged in order), the Dice's
    merged voxels hand the voxel errors their sorted key, and the areas equal those of one accumulator over
    the cases; a voxel-errors state that is not the Dice's own cases is refused."""
    import pickle

    from selectivekit.cli._evaluation import CaseAccumulator
    from selectivekit.cli._voxel_metrics import VoxelMetrics
    from selectivekit.streaming import RiskCoverageAccumulator

    preds, labels, us = noisy_cases(5, [(9, 8, 7), (5, 6, 7), (6, 6, 6), (4, 5, 6)], num_classes=K)
    us = [np.round(u * 7).astype(np.float32) / 7 for u in us]  # ties across cases

    def worker(cases):
        acc = CaseAccumulator(
            SegmentationAccumulator(num_classes=K),
            VoxelMetrics(K, False, with_probs=False, max_memory=1 << 30, grid="bfloat16"),
            sort=True,
        )
        for i in cases:
            acc.add_case(f"case_{i}", skio.CaseArrays(preds[i], labels[i], us[i], None))
        return pickle.loads(pickle.dumps(acc))

    merged = worker([0, 1]).merge(worker([2, 3]))
    one = RiskCoverageAccumulator()
    for p, t, u in zip(preds, labels, us, strict=True):
        one.update(u, p == t)
    errors = merged.voxel_metrics.errors
    step = merged.segmentation._sorted_key_step(errors)
    step()
    assert errors._given_key is not None  # the key handed over, not yet used
    assert errors.aurc_bound(value=True) == one.aurc_bound(value=True)
    assert (errors.augrc(), errors.e_aurc()) == (one.augrc(), one.e_aurc())
    # the errors of other data (not the very arrays of the Dice's images): no key for them
    assert merged.segmentation._sorted_key_step(one) is None
    other = worker([0, 1]).merge(worker([2, 3]))
    other.voxel_metrics.errors._u[1] = other.voxel_metrics.errors._u[1].copy()
    assert other.segmentation._sorted_key_step(other.voxel_metrics.errors) is None
