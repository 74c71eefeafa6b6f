"""`evaluate`: exact streaming by default, grid bounds past the budget, `--shard`, `--save-state`, `merge`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selectivekit import shards
from selectivekit.cli import main
from tests.conftest import evaluate_argv, noisy_cases, read_report, write_case_folders


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    shapes = [(9, 8, 6), (7, 10, 5), (8, 8, 8), (6, 9, 7), (10, 6, 6), (5, 5, 5), (6, 7, 8)]
    preds, labels, us = noisy_cases(3, shapes)
    us = [np.round(u * 50) / 50 for u in us]  # ties: many voxels per grid cell
    us = [u.astype(np.float32) for u in us]
    return root, write_case_folders(root, preds, labels, us)


def _numbers(report):
    """The report without the settings (which name the mode)."""
    return {k: v for k, v in report.items() if k != "settings"}


def test_streaming_is_exact_by_default(run, capsys):
    root, folders = run
    assert main(evaluate_argv(folders, root / "exact", "--exact")) == 0
    assert main(evaluate_argv(folders, root / "stream")) == 0
    exact, stream = read_report(root / "exact"), read_report(root / "stream")
    assert stream["path"] == exact["path"] == "exact"
    assert stream["settings"]["max_memory"] == 1 << 30
    assert _numbers(stream) == _numbers(exact)  # every number, to the last digit
    assert stream["aurc_dice_bound"] == [stream["aurc_dice"]] * 2
    for row in stream["coverages"]:
        assert row["mean_bound"] == [row["mean"]] * 2


def test_grid_past_the_budget_carries_bounds(run):
    root, folders = run
    assert main(evaluate_argv(folders, root / "exact2", "--exact")) == 0
    exact = read_report(root / "exact2")
    for grid in ("bfloat16", "float32-24"):
        out = root / f"grid-{grid}"
        assert main(evaluate_argv(folders, out, "--max-memory", "0", "--grid", grid)) == 0
        report = read_report(out)
        assert report["path"] == "grid" and report["settings"]["grid"] == grid
        low, high = report["aurc_dice_bound"]
        assert low <= exact["aurc_dice"] <= high
        for row, ref in zip(report["coverages"], exact["coverages"], strict=True):
            assert row["mean_bound"][0] - 1e-12 <= ref["mean"] <= row["mean_bound"][1] + 1e-12
            assert row["p5_bound"][0] - 1e-12 <= ref["p5"] <= row["p5_bound"][1] + 1e-12
            assert row["coverage_bound"][0] <= ref["coverage"] <= row["coverage_bound"][1]
        assert "the exact value lies in" in (out / "report.md").read_text()


@pytest.mark.parametrize("budget", ["1GiB", "0"])
def test_shards_merge_to_the_one_process_report(run, budget):
    root, folders = run
    single = root / f"single-{budget}"
    assert main(evaluate_argv(folders, single, "--max-memory", budget)) == 0
    states = []
    for i in (2, 0, 1):  # any order: merge orders by shard
        path = root / f"state-{budget}-{i}.npz"
        args = evaluate_argv(folders, root / "unused", "--max-memory", budget, "--shard", f"{i}/3")
        assert main([*args, "--save-state", str(path)]) == 0
        states.append(str(path))
    assert not (root / "unused").exists()
    merged = root / f"merged-{budget}"
    assert main(["merge", *states, "--out", str(merged)]) == 0
    expected = read_report(single)
    # a state file carries the Dice state, not the voxel errors (a section of one-process reports only)
    assert "voxel_errors" in expected
    del expected["voxel_errors"]
    assert read_report(merged) == expected  # the rest of report.json, settings included
    a, b = np.load(single / "curve.npz"), np.load(merged / "curve.npz")
    for key in ("coverage", "mean_dice", "threshold"):
        np.testing.assert_array_equal(a[key], b[key])


def test_merge_refuses_what_does_not_belong_together(run, tmp_path, capsys):
    _, folders = run

    def state(name, *extra, shard="0/2"):
        path = tmp_path / name
        args = evaluate_argv(folders, tmp_path / "unused", "--shard", shard, *extra)
        assert main([*args, "--save-state", str(path)]) == 0
        return str(path)

    s0, s1 = state("s0.npz"), state("s1.npz", shard="1/2")
    other = state("other.npz", "--coverages", "0.5", shard="1/2")
    three = state("three.npz", shard="1/3")
    (tmp_path / "text.npz").write_text("not a state")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    header, arrays = json.loads(np.load(s0)["header"].tobytes()), dict(np.load(s0))
    header["version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    capsys.readouterr()
    cases = [
        ([s0], "misses shard(s) 1/2"),
        ([s0, s0], "holds shard 0/2 twice"),
        ([s0, other], "differ in their requested"),
        ([s0, three], "one split into N shards"),
        ([s0, str(tmp_path / "text.npz")], "is not a selectivekit state file"),
        ([s0, str(tmp_path / "plain.npz")], "it has no header"),
        ([str(tmp_path / "future.npz"), s1], "has state version 99"),
        ([s0, str(tmp_path / "missing.npz")], "does not exist"),
    ]
    for paths, message in cases:
        assert main(["merge", *paths, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert "`STATES`" in err
    assert not (tmp_path / "out").exists()
    assert main(["merge", s0, s1, "--out", str(tmp_path / "out")]) == 0


def test_shard_usage_errors(run, tmp_path, capsys):
    _, folders = run
    base = evaluate_argv(folders, tmp_path / "out")
    for extra, message in (
        (["--shard", "0/2"], "`--shard` needs `--save-state FILE`"),
        (["--save-state", str(tmp_path / "s.npz"), "--exact"], "`--exact` does not go with `--save-state`"),
        (["--save-state", str(tmp_path / "s.npz"), "--ci", "0.9"], "`--ci` does not go with `--save-state`"),
        (["--shard", "2/2", "--save-state", "x.npz"], "0 <= I < N"),
        (["--shard", "a/2", "--save-state", "x.npz"], "`--shard` must be I/N"),
        (["--max-memory", "lots"], "`--max-memory` must be a size"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_state_file_helpers():
    assert [shards.shard_slice(7, (i, 3)) for i in range(3)] == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [shards.shard_slice(2, (i, 4)) for i in range(4)] == [
        slice(0, 1),
        slice(1, 2),
        slice(2, 2),
        slice(2, 2),
    ]
    covered = [i for k in range(5) for i in range(23)[shards.shard_slice(23, (k, 5))]]
    assert covered == list(range(23))
    with pytest.raises(ValueError, match="`shard` must be I/N"):
        shards.parse_shard("1-2")
    with pytest.raises(ValueError, match="`states` is empty"):
        shards.read_states([])
