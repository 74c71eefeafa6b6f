"""Smoke runs of the whole job per framework and dataset, exact resume, and a 2-process gloo DDP run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
import torch

from reference_models.config import RunConfig
from reference_models.data.synthetic import write_synthetic_glas
from reference_models.pipeline import reproduce
from reference_models.tasks import build_task
from reference_models.train_torch import TorchTrainer

ROOT = Path(__file__).resolve().parents[2]
TINY_GLAS = {
    "n_train": 4, "n_test_a": 2, "n_test_b": 2, "height_range": (36, 48), "width_range": (40, 56), "seed": 0,
}  # fmt: skip
TINY_MMWHS = {"n_volumes": 8, "shape": (24, 24, 16), "spacing": (2.2, 2.2, 3.4), "seed": 0}


def tiny_config(tmp_path: Path, dataset: str, framework: str = "torch", **overrides) -> RunConfig:
    glas = "glas" in dataset
    settings = {
        "dataset": dataset,
        "framework": framework,
        "data_dir": str(tmp_path / "data"),
        "out": str(tmp_path / "out"),
        "epochs": 1,
        "batch_size": 4,
        "samples_per_epoch": 8,
        "patch": 32 if glas else 16,
        "width": 0.0625 if glas else 0.125,
        "spacing": 4.0,
        "folds": None if glas else [0],
        "progress": False,
        "device": "cpu",
        "extra": {"synthetic": TINY_GLAS if glas else TINY_MMWHS},
    }
    settings.update(overrides)
    return RunConfig(**settings)


def check_report(out: Path, dataset: str, framework: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == dataset and report["framework"] == framework
    assert set(report["models"]) == {"baseline", "uncertainty_aware"}
    for m in report["models"].values():
        assert 0.0 <= m["aurc"] <= 1.0
        assert set(m["dice_at_coverage"]) == {"0.95", "0.90", "0.80", "0.70"}
        for key, entry in m["dice_at_coverage"].items():
            assert set(entry) >= {"mean", "std", "p5", "coverage"}
            assert 0.0 <= entry["p5"] <= entry["mean"] <= 1.0
            assert entry["coverage"] >= float(key) - 1e-9
    parts = next(iter(report["models"].values())).get("parts", {"cv": None})
    for name in ["report.md"] + [
        f"{fig}_{part}.png" for part in parts for fig in ("dice_coverage", "per_image")
    ]:
        assert (out / name).stat().st_size > 0
    return report


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("dataset", ["synthetic-glas", "synthetic-mmwhs"])
def test_one_epoch_smoke_run(tmp_path, dataset, framework, capsys):
    cfg = tiny_config(tmp_path, dataset, framework)
    report = reproduce(cfg)
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    check_report(tmp_path / "out", dataset, framework)
    printed = capsys.readouterr().out
    assert "AURC %" in printed and "| 0.95 |" in printed
    if dataset == "synthetic-glas":
        assert set(report["models"]["baseline"]["parts"]) == {"testA", "testB"}
        testa = report["models"]["baseline"]["parts"]["testA"]["aurc"]
        testb = report["models"]["baseline"]["parts"]["testB"]["aurc"]
        assert report["models"]["baseline"]["aurc"] == pytest.approx((testa + testb) / 2)


def test_authors_protocol_reports_the_leak(tmp_path):
    cfg = tiny_config(tmp_path, "synthetic-mmwhs", protocol="authors", samples_per_epoch=4, patch=None)
    task = build_task(cfg)
    assert task.patch_size == (64, 64, 64)  # the authors' crop size unless --patch says otherwise
    assert RunConfig(dataset="synthetic-mmwhs", protocol="authors", patch=32).resolved().patch == 32
    assert len(task.runs[0].train_images) == 27 * 4  # 27 GT-box crops per training volume
    assert "LEAKS THE LABEL" in task.notes[0]
    with pytest.raises(ValueError, match="MM-WHS only"):
        RunConfig(dataset="synthetic-glas", protocol="authors").resolved()


def _final_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("pairs", ["exact", "sampled"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, pairs):
    cfg = tiny_config(tmp_path, "synthetic-glas", epochs=3, pairs=pairs, out=str(tmp_path / "straight"))
    task = build_task(cfg)
    run = task.runs[0]
    straight = TorchTrainer(task, cfg.resolved()).fit(run, "uncertainty_aware").state_dict()

    interrupted = tiny_config(tmp_path, "synthetic-glas", epochs=3, pairs=pairs, out=str(tmp_path / "cut"))
    first = TorchTrainer(task, interrupted.resolved())
    first.fit(run, "uncertainty_aware", stop_after=1)  # "crash" after the first epoch's checkpoint
    ckpt = first.checkpoint_path(run.name, "uncertainty_aware")
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    resumed_cfg = tiny_config(
        tmp_path, "synthetic-glas", epochs=3, pairs=pairs, out=str(tmp_path / "cut"), resume=True
    )
    resumed = TorchTrainer(task, resumed_cfg.resolved()).fit(run, "uncertainty_aware").state_dict()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 3
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    # and the leftover temporary files of the atomic writes are gone
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    cfg = tiny_config(tmp_path, "synthetic-glas")
    task = build_task(cfg)
    TorchTrainer(task, cfg.resolved()).fit(task.runs[0], "baseline")
    other = tiny_config(tmp_path, "synthetic-glas", resume=True, lr=1e-3)
    with pytest.raises(ValueError, match="other settings"):
        TorchTrainer(task, other.resolved()).fit(task.runs[0], "baseline")


def test_keras_resume_gives_the_same_weights(tmp_path):
    from reference_models.train_keras import KerasTrainer

    def cfg(out, **kw):
        return tiny_config(
            tmp_path, "synthetic-glas", "keras", epochs=2, out=str(tmp_path / out), **kw
        ).resolved()

    task = build_task(cfg("a"))
    run = task.runs[0]
    straight = [w.copy() for w in KerasTrainer(task, cfg("a")).fit(run, "baseline").get_weights()]
    KerasTrainer(task, cfg("b")).fit(run, "baseline", stop_after=1)
    resumed = KerasTrainer(task, cfg("b", resume=True)).fit(run, "baseline").get_weights()
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    data = write_synthetic_glas(tmp_path / "glas", **TINY_GLAS)
    args = [
        "-m", "reference_models", "reproduce", "--dataset", "glas", "--data-dir", str(data),
        "--epochs", "1", "--batch-size", "4", "--samples-per-epoch", "8", "--patch", "32",
        "--width", "0.0625", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, *args, "--out", str(ddp_out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_report = check_report(ddp_out, "glas", "torch")
    assert ddp_report["world_size"] == 2
    single_out = tmp_path / "single"
    done = subprocess.run(
        [sys.executable, *args, "--out", str(single_out)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # the baseline's gradient is the same global-batch mean either way: same weights up to rounding
    a = _final_weights(ddp_out / "checkpoints" / "glas_baseline.pt")
    b = _final_weights(single_out / "checkpoints" / "glas_baseline.pt")
    # Conv biases right before an InstanceNorm have an exactly-zero true gradient (the norm removes the
    # mean), so Adam moves them by +-lr following float-rounding noise; they are excluded.
    redundant = re.compile(r"^(down|dec)\.\d+\.[03]\.bias$")
    compared = [name for name in a if not redundant.match(name)]
    assert len(compared) > len(a) / 2
    for name in compared:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-5, msg=name)
    # evaluation merged over both processes covers every held-out image exactly once
    single_report = json.loads((single_out / "report.json").read_text())
    ddp_parts = ddp_report["models"]["baseline"]["parts"]
    single_parts = single_report["models"]["baseline"]["parts"]
    for part in ("testA", "testB"):
        # full-coverage Dice does not depend on thresholds; AURC differs by the bfloat16 binning of the
        # streaming accumulators (and by the rounding-level weight differences)
        full = ddp_parts[part]["dice_full_coverage"]
        assert full == pytest.approx(single_parts[part]["dice_full_coverage"], abs=2e-3)
        assert ddp_parts[part]["aurc"] == pytest.approx(single_parts[part]["aurc"], abs=5e-3)
