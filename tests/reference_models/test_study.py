"""The 3D-study tooling: loss settings and schedules, curves, seeds with paired statistics, the Appendix D
study command and the prepared GPU check, at tiny sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from reference_models.cli import main
from reference_models.config import LOSS_PRESETS, RunConfig
from reference_models.curves import read_curves
from reference_models.pipeline import reproduce
from reference_models.stats import paired_over_images, paired_over_seeds, seed_summary
from reference_models.study import default_values, parse_values, run_study
from reference_models.tasks import build_task

from .test_train import tiny_config

# ---------------------------------------------------------------- settings and schedule


def test_authors_setting_is_the_papers_objective():
    cfg = RunConfig(loss_setting="authors").resolved()
    assert (cfg.weight, cfg.unc_start, cfg.unc_ramp, cfg.rank_within) == (2000.0, 0.0, 0.0, "batch")
    assert [cfg.unc_factor(e) for e in (0.0, 0.5, 19.9)] == [1.0, 1.0, 1.0]


def test_default_setting_differs_from_the_authors_and_options_override_it():
    assert LOSS_PRESETS["default"] != LOSS_PRESETS["authors"]
    cfg = RunConfig(dataset="synthetic-mmwhs", weight=5.0, unc_start=2, unc_ramp=4, rank_within="image")
    cfg = cfg.resolved()
    assert (cfg.weight, cfg.unc_start, cfg.unc_ramp, cfg.rank_within) == (5.0, 2.0, 4.0, "image")


def test_preset_schedule_scales_with_the_epochs():
    short = RunConfig(epochs=10).resolved()
    long = RunConfig(epochs=40).resolved()
    assert long.unc_start == pytest.approx(4 * short.unc_start)
    assert long.unc_ramp == pytest.approx(4 * short.unc_ramp)


def test_unc_factor_is_a_two_stage_ramp():
    cfg = RunConfig(unc_start=2.0, unc_ramp=4.0).resolved()
    expected = {0.0: 0.0, 1.99: 0.0, 2.0: 0.0, 3.0: 0.25, 5.0: 0.75, 6.0: 1.0, 50.0: 1.0}
    for epoch, factor in expected.items():
        assert cfg.unc_factor(epoch) == pytest.approx(factor)
    hard = RunConfig(unc_start=3.0, unc_ramp=0.0).resolved()
    assert (hard.unc_factor(2.999), hard.unc_factor(3.0)) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_setting": "paper"}, "`loss_setting` must be one of"),
        ({"rank_within": "voxel"}, "`rank_within` must be one of"),
        ({"weight": -1.0}, "`weight` must be a finite number >= 0"),
        ({"unc_start": float("nan")}, "`unc_start` must be a finite number >= 0"),
        ({"epochs": -1}, "`epochs` must be >= 1"),
    ],
)
def test_bad_loss_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs).resolved()


def test_cli_rejects_an_unknown_loss_setting(capsys):
    assert main(["reproduce", "--loss-setting", "nope"]) == 2  # one line, exit status 2 (argparse's error)
    assert "argument --loss-setting: invalid choice: 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- statistics against scipy and by hand


def test_paired_over_seeds_matches_scipy_and_a_hand_interval():
    ours, base = [0.10, 0.12, 0.11, 0.09], [0.15, 0.14, 0.16, 0.13]
    got = paired_over_seeds(ours, base)
    d = np.subtract(ours, base)
    assert got["mean"] == pytest.approx(d.mean())
    assert got["std"] == pytest.approx(np.std(d, ddof=1))
    assert got["p_value"] == pytest.approx(stats.ttest_rel(ours, base).pvalue)
    half = stats.t.ppf(0.975, 3) * np.std(d, ddof=1) / math.sqrt(4)
    assert got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])


def test_paired_over_seeds_with_one_seed_has_no_interval():
    got = paired_over_seeds([0.1], [0.2])
    assert got["ci95"] is None and got["p_value"] is None and got["std"] == 0.0
    assert got["mean"] == pytest.approx(-0.1)


def test_paired_over_images_matches_scipy_wilcoxon():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 15)
    ours = base + rng.normal(0.01, 0.02, 15)
    got = paired_over_images(ours, base)
    assert got["p_value"] == pytest.approx(stats.wilcoxon(ours - base).pvalue)
    assert got["share_ours_higher"] == pytest.approx(np.mean(ours > base))
    assert got["n_images"] == 15
    assert paired_over_images(base, base)["p_value"] == 1.0


def test_seed_summary_is_mean_and_sample_std():
    entries = [
        {
            "aurc": a,
            "dice_full_coverage": d,
            "dice_at_coverage": {"0.90": {"mean": d, "p5": d, "coverage": 0.9}},
        }
        for a, d in ((0.1, 0.8), (0.3, 0.6))
    ]
    got = seed_summary(entries)
    assert got["aurc"]["mean"] == pytest.approx(0.2)
    assert got["aurc"]["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert got["dice_at_coverage"]["0.90"]["mean"]["mean"] == pytest.approx(0.7)


# ---------------------------------------------------------------- runs at tiny sizes


@pytest.mark.slow
def test_seeds_report_adds_seeds_and_paired(tmp_path):
    cfg = tiny_config(tmp_path, "synthetic-glas", seeds=[0, 1])
    report = reproduce(cfg, echo=lambda *_: None)
    out = tmp_path / "out"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["seeds"]["values"] == [0, 1]
    per_seed = [json.loads((out / f"seed{s}" / "report.json").read_text()) for s in (0, 1)]
    for kind in ("baseline", "uncertainty_aware"):
        aurcs = [r["models"][kind]["aurc"] for r in per_seed]
        assert report["models"][kind]["aurc"] == pytest.approx(np.mean(aurcs))  # the old shape stays
        assert on_disk["seeds"]["summary"][kind]["aurc"]["std"] == pytest.approx(np.std(aurcs, ddof=1))
        assert on_disk["seeds"]["per_seed"]["1"][kind]["aurc"] == pytest.approx(aurcs[1])
    diffs = [r["models"]["uncertainty_aware"]["aurc"] - r["models"]["baseline"]["aurc"] for r in per_seed]
    assert on_disk["paired"]["over_seeds"]["aurc"]["mean"] == pytest.approx(np.mean(diffs))
    per_image = on_disk["paired"]["per_image_dice"]["dice_full_coverage"]
    assert per_image["n_images"] == sum(on_disk["n_images"].values())
    md = (out / "report.md").read_text()
    assert "Synthetic data" in md and "## Ours minus baseline" in md and "```" not in md


@pytest.mark.slow
@pytest.mark.parametrize("rank_within", ["batch", "image", "class"])
def test_curves_log_both_terms_and_gradient_norms(tmp_path, rank_within):
    cfg = tiny_config(
        tmp_path,
        "synthetic-mmwhs",
        log_every=1,
        rank_within=rank_within,
        unc_start=0.5,
        unc_ramp=0.0,
        weight=10.0,
    )
    reproduce(cfg, echo=lambda *_: None)
    for kind in ("baseline", "uncertainty_aware"):
        points = read_curves(tmp_path / "out" / "curves" / f"fold0_{kind}_seed42.jsonl")
        assert [p["step"] for p in points] == [0, 1]
        for p in points:
            assert 0.0 <= p["dice"] <= 1.0 and 0.0 <= p["aurc_dice"] <= 1.0
            assert p["seg_loss"] > 0 and p["unc_loss"] >= 0 and p["grad_seg"] > 0
    ours = read_curves(tmp_path / "out" / "curves" / "fold0_uncertainty_aware_seed42.jsonl")
    assert [p["factor"] for p in ours] == [0.0, 1.0]  # two steps: 0 before epoch 0.5, then on
    assert all("grad_unc" in p for p in ours)


@pytest.mark.slow
def test_study_command_at_tiny_size(tmp_path):
    cfg = tiny_config(tmp_path, "synthetic-glas")
    result = run_study("weight", cfg, [0, 1], [10.0, 100.0], echo=lambda *_: None)
    out = tmp_path / "out"
    assert json.loads((out / "study.json").read_text())["values"] == ["10.0", "100.0"]
    assert (out / "study.png").stat().st_size > 0
    rows = result["runs"]["100.0"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert result["summary"]["100.0"]["aurc"]["mean"] == pytest.approx(np.mean([r["aurc"] for r in rows]))
    assert "| baseline |" in (out / "study.md").read_text()


@pytest.mark.slow
def test_study_cli_two_stage(tmp_path, capsys):
    # the synthetic GlaS folder that --data-dir names, written beforehand at the tiny size of the other runs
    # here (the command reuses a finished folder; at the default size evaluating took minutes)
    build_task(tiny_config(tmp_path, "synthetic-glas"))
    assert (tmp_path / "data" / ".complete").is_file()
    code = main(
        ["study", "two-stage", "--values", "0,1", "--seeds", "0", "--epochs", "2", "--samples-per-epoch", "8",
         "--batch-size", "4", "--patch", "32", "--width", "0.0625", "--no-progress",
         "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert "two-stage=1.0 seed 0" in capsys.readouterr().out


def test_study_values():
    cfg = RunConfig(epochs=10).resolved()
    assert default_values("two-stage", cfg) == [0, 2, 4, 6, 8]
    assert default_values("sample-size", cfg)[-1] == "exact"
    assert parse_values("sample-size", "100x2200,exact") == ["100x2200", "exact"]
    with pytest.raises(ValueError, match="`--values` for sample-size"):
        parse_values("sample-size", "100*2200")
    with pytest.raises(ValueError, match="`--values` for weight must be numbers"):
        parse_values("weight", "a,b")


def test_study_cli_reports_bad_values(capsys):
    assert main(["study", "weight", "--values", "x"]) == 2
    assert "`--values`" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_size_on_cpu(tmp_path, capsys):
    from reference_models import gpu_check

    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "g")]) == 0
    printed = capsys.readouterr().out
    for label in ("| baseline |", "| default |", "| authors |"):
        assert label in printed
    rows = json.loads((tmp_path / "g" / "gpu_check.json").read_text())
    assert set(rows) >= {"baseline", "default", "authors", "total_wall_s"}
    authors = json.loads((tmp_path / "g" / "authors" / "report.json").read_text())["config"]
    assert (authors["weight"], authors["unc_start"], authors["rank_within"]) == (2000.0, 0.0, "batch")


@pytest.mark.slow
def test_weight_zero_trains_exactly_the_baseline(tmp_path):
    """The control of every study: with the term's weight at 0 the uncertainty-aware model takes the very
    steps of the baseline (same initial weights, patches and order), so any difference is the term's."""
    import torch

    from reference_models.tasks import build_task
    from reference_models.train_torch import TorchTrainer

    cfg = tiny_config(tmp_path, "synthetic-mmwhs", weight=0.0, epochs=2, log_every=1).resolved()
    task = build_task(cfg)
    trainer = TorchTrainer(task, cfg)
    base = trainer.fit(task.runs[0], "baseline").state_dict()
    ours = trainer.fit(task.runs[0], "uncertainty_aware").state_dict()
    assert base.keys() == ours.keys()
    for key in base:
        assert torch.equal(base[key], ours[key]), key
