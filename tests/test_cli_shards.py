"""`evaluate`: exact streaming by default, grid bounds past the budget, `--shard`, `--save-state`, `merge`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selectivekit import shards
from selectivekit.cli import main
from tests.conftest import (
    evaluate_argv,
    noisy_cases,
    npy_case_folders,
    read_report,
    run_cli,
    write_case_folders,
)


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
    assert read_report(merged) == read_report(single)  # the whole report.json, settings included
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


# --- merge: every invariant of a state file checked ---------------------------------------------------------


@pytest.fixture(scope="module")
def shard_states(tmp_path_factory):
    """Two shard states of one evaluation, on the exact path and on the grid."""
    root = tmp_path_factory.mktemp("states")
    rng = np.random.default_rng(8)
    preds = [rng.integers(0, 3, (7, 6)) for _ in range(5)]
    labels = [np.where(rng.random(p.shape) < 0.8, p, rng.integers(0, 3, p.shape)) for p in preds]
    us = [np.round(rng.random(p.shape) * 20).astype(np.float32) / 20 for p in preds]
    folders = npy_case_folders(root, preds, labels, us)
    states = {}
    for path_name, budget in (("exact", "1GiB"), ("grid", "0")):
        for i in range(2):
            state = root / f"{path_name}-{i}.npz"
            args = evaluate_argv(folders, root / "unused", "--max-memory", budget, "--shard", f"{i}/2")
            assert run_cli([*args, "--save-state", str(state)])[0] == 0
            states[path_name, i] = state
    return root, states


def _tampered(source, target, change) -> None:
    """``source`` with ``change(header, arrays)`` applied, written as a state file to ``target``."""
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("header").tobytes())
    acc = {k[4:]: v for k, v in arrays.items() if k.startswith("acc_")}
    change(header, acc)
    payload = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload |= {f"acc_{k}": v for k, v in acc.items()}
    np.savez(target, **payload)


def _set_header(key, value):
    def change(header, acc):
        header[key] = value(header[key]) if callable(value) else value

    return change


def _set_array(key, value):
    def change(header, acc):
        acc[key] = value(acc[key].copy())

    return change


def _bump(index, by=1):
    def f(a):
        a[index] += by
        return a

    return f


STATE_TAMPERING = {
    # header: names, voxel counts, shard, coverages
    "names_one_more": ("both", _set_header("names", lambda n: [*n, "extra"])),
    "names_one_less": ("both", _set_header("names", lambda n: n[:-1])),
    "names_repeated": ("both", _set_header("names", lambda n: [n[0]] * len(n))),
    "names_of_other_shard": ("both", _set_header("names", lambda n: ["case_4", *n[1:]])),
    "voxels_changed": ("both", _set_header("voxels", lambda v: [v[0] + 1, *v[1:]])),
    "voxels_negative": ("both", _set_header("voxels", lambda v: [-v[0], *v[1:]])),
    "n_cases": ("both", _set_header("n_cases", 9)),
    "requested": ("both", _set_header("requested", [1.5])),
    "settings_num_classes": ("both", _set_header("settings", lambda s: {**s, "num_classes": 4})),
    # exact path arrays
    "raw_size_shifted": ("exact", _set_array("raw_size", lambda a: a + np.array([1, -1, 0])[: a.size])),
    "raw_pred_class": ("exact", _set_array("raw_pred", lambda a: a.astype(np.int64) + 3)),
    "raw_u_nan": ("exact", _set_array("raw_u", lambda a: np.where(np.arange(a.size) == 0, np.nan, a))),
    "raw_u_short": ("exact", _set_array("raw_u", lambda a: a[:-1])),
    "raw_label_float": ("exact", _set_array("raw_label", lambda a: a.astype(np.float64))),
    # grid arrays
    "cells_count": ("grid", _set_array("cells_count", _bump(0))),
    "cells_id_reversed": ("grid", _set_array("cells_id", lambda a: a[::-1])),
    "cells_top_other_cell": ("grid", _set_array("cells_top", lambda a: a[::-1])),
    "cells_top_int": ("grid", _set_array("cells_top", lambda a: a.astype(np.int64))),
    "img_size": ("grid", _set_array("img_size", _bump(0))),
    "img_cum_count_reversed": ("grid", _set_array("img_cum_count", lambda a: a[::-1])),
    "img_cum_count_last": ("grid", _set_array("img_cum_count", _bump(-1))),
    "img_ev_fn_huge": ("grid", _set_array("img_ev_fn", _bump(0, 10**6))),
    "img_ev_fp_huge": ("grid", _set_array("img_ev_fp", _bump(0, 10**6))),
    "img_label_count": ("grid", _set_array("img_label_count", _bump(0, 10**6))),
    "img_ev_class": ("grid", _set_array("img_ev_class", _bump(0, 5))),
    "img_cells_outside": ("grid", _set_array("img_cells", lambda a: a.astype(np.int64) + 2**20)),
    "img_label_count_len": ("grid", _set_array("img_label_count_len", _bump(0))),
}


SHARED_FIELDS = {"n_cases", "requested", "settings_num_classes"}


_TAMPER_CASES = [
    (name, path)
    for name, (where, _) in STATE_TAMPERING.items()
    for path in (("exact", "grid") if where == "both" else (where,))
]


@pytest.mark.parametrize(("name", "path"), _TAMPER_CASES)
def test_merge_refuses_tampered_state(shard_states, tmp_path, name, path):
    _, states = shard_states
    bad = tmp_path / "edited.npz"
    _tampered(states[path, 0], bad, STATE_TAMPERING[name][1])
    other = states[path, 1]
    if name in SHARED_FIELDS:  # edited in every shard, else the shards would merely differ
        other = tmp_path / "edited-too.npz"
        _tampered(states[path, 1], other, STATE_TAMPERING[name][1])
    out = tmp_path / "out"
    code, err = run_cli(["merge", str(bad), str(other), "--out", str(out)])
    assert code == 1 and err.count("\n") == 1, err
    assert "edited" in err and "internal error" not in err, err
    assert not out.exists()
    # the untouched states still merge
    assert run_cli(["merge", str(states[path, 0]), str(states[path, 1]), "--out", str(out)])[0] == 0


@pytest.mark.parametrize("budget", ["1GiB", "0"], ids=["exact", "grid"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64_big", "int64_mixed", "uint8"])
def test_merge_accepts_untouched_states_of_every_dtype(tmp_path, dtype, budget):
    """The checks refuse no state that `evaluate --save-state` writes; the merge equals one process."""
    rng = np.random.default_rng(12)
    labels = [rng.integers(0, 3, (9, 7)) for _ in range(5)]
    preds = [np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape)) for t in labels]
    if dtype == "int64_big":
        us = [2**60 + rng.integers(0, 2**40, t.shape) for t in labels]
    elif dtype == "int64_mixed":  # small integers in some images (kept as float64), beyond 2**53 in others
        us = [(2**60 if i % 2 else 0) + rng.integers(0, 300, t.shape) for i, t in enumerate(labels)]
    else:
        us = [(rng.random(t.shape) * 200).astype(dtype) for t in labels]
    folders = npy_case_folders(tmp_path / "data", preds, labels, us)
    states = [str(tmp_path / f"s{i}.npz") for i in range(3)]
    for i, state in enumerate(states):
        args = evaluate_argv(folders, tmp_path / "unused", "--max-memory", budget, "--shard", f"{i}/3")
        assert run_cli([*args, "--save-state", state])[0] == 0
    code, err = run_cli(["merge", *states, "--out", str(tmp_path / "merged")])
    assert code == 0, err
    assert run_cli(evaluate_argv(folders, tmp_path / "single", "--max-memory", budget))[0] == 0
    assert read_report(tmp_path / "merged") == read_report(tmp_path / "single")
