"""The pre-registered protocol: its statistics, its rules, and the command at a tiny size (resumable)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reference_models import protocol
from reference_models.protocol import CONTROL, CURRENT_DEFAULT, candidate_rule, decision_rule, paired


def test_paired_interval_is_scipys_one_sample_t_interval():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 12):
        d = rng.normal(0.1, 1.0, n)
        got = paired(list(d))
        want = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert got["mean"] == pytest.approx(d.mean())
        assert (got["low"], got["high"]) == pytest.approx((want.low, want.high), rel=1e-12)
        assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert paired([0.3])["n"] == 1 and np.isnan(paired([0.3])["low"])


@pytest.mark.parametrize("dataset", ["synthetic-mmwhs", "synthetic-glas"])
def test_arms_resolve_to_the_settings_the_protocol_names(dataset):
    from reference_models.config import RunConfig
    from selectivekit import LOSS_SETTINGS

    base = RunConfig(dataset=dataset)
    arms = {s.name: s.config(base) for s in protocol.PROTOCOLS["3d"]["tuning"]}
    assert arms[CURRENT_DEFAULT].uncertainty_setting() == LOSS_SETTINGS["default"]
    assert arms["authors-w2000"].uncertainty_setting() == LOSS_SETTINGS["authors"]
    assert arms["binary-step0-w200"].uncertainty_setting() == LOSS_SETTINGS["default"].replace(
        warmup=0.0, ramp=0.0
    )
    assert arms["binary-schedule-w20"].uncertainty_setting() == LOSS_SETTINGS["default"].replace(weight=20.0)
    control = arms[CONTROL.name]
    assert control.unc_term == "error-push"
    assert control.uncertainty_setting().replace(push="binary") == LOSS_SETTINGS["default"]
    assert all(cfg.seg_loss == arms["baseline"].seg_loss for cfg in arms.values())  # one segmentation term
    assert {cfg.epochs for cfg in arms.values()} == {base.resolved().epochs}


def _fake(metrics_by_arm: dict, folds, seeds=(0, 1, 2)) -> dict:
    """Runs with the given (aurc, dice) per arm, plus a small per-seed jitter."""
    runs = {}
    for arm, (aurc, dice) in metrics_by_arm.items():
        for f in folds:
            for s in seeds:
                jitter = 1e-4 * (s - 1)
                runs[(arm, f, s)] = {"metrics": {"aurc": aurc + jitter, "dice_full": dice + jitter}}
    return runs


def test_candidate_rule_takes_the_lowest_aurc_within_one_dice_point():
    arms = [s.name for s in protocol.PROTOCOLS["3d"]["tuning"]]
    values = {a: (0.010, 0.90) for a in arms}
    values["baseline"] = (0.010, 0.900)
    values["authors-w2000"] = (0.001, 0.30)  # the lowest AURC, but it lost the segmentation
    values["binary-step0-w200"] = (0.004, 0.8905)  # 0.95 points below: allowed
    values["binary-schedule-w20"] = (0.005, 0.899)
    values[CONTROL.name] = (0.0001, 0.95)  # the control is never a candidate
    runs = _fake(values, folds=(0,))
    assert candidate_rule(runs, "3d") == "binary-step0-w200"
    values["binary-step0-w200"] = (0.004, 0.8895)  # 1.05 points below: out
    assert candidate_rule(_fake(values, folds=(0,)), "3d") == "binary-schedule-w20"
    # nothing within a point: the best Dice among the ranking arms
    worse = {a: (0.005, 0.5 + 0.01 * i) for i, a in enumerate(arms)} | {"baseline": (0.01, 0.99)}
    ranking = [s.name for s in protocol.PROTOCOLS["3d"]["tuning"] if s.group in ("ablation", "weight")]
    assert candidate_rule(_fake(worse, folds=(0,)), "3d") == max(ranking, key=lambda a: worse[a][1])
    del runs[("binary-schedule-w2", 0, 2)]  # a tuning run missing: no candidate yet
    assert candidate_rule(runs, "3d") is None


def test_decision_rule_on_the_evaluation_folds():
    folds = protocol.PROTOCOLS["3d"]["evaluation_folds"]
    rng = np.random.default_rng(1)
    runs = {}
    for f in folds:
        for s in (0, 1, 2):
            base_aurc, base_dice = 0.01 + 0.001 * rng.random(), 0.9 + 0.01 * rng.random()
            runs[("baseline", f, s)] = {"metrics": {"aurc": base_aurc, "dice_full": base_dice}}
            runs[(CONTROL.name, f, s)] = {"metrics": {"aurc": base_aurc, "dice_full": base_dice}}
            # the default lowers AURC by 20% and keeps Dice; "other" lowers it more but costs 3 points
            runs[(CURRENT_DEFAULT, f, s)] = {
                "metrics": {"aurc": 0.8 * base_aurc + 1e-5 * rng.random(), "dice_full": base_dice - 0.001}
            }
            runs[("other", f, s)] = {"metrics": {"aurc": 0.5 * base_aurc, "dice_full": base_dice - 0.03}}
    arms = ["baseline", CONTROL.name, CURRENT_DEFAULT, "other"]
    decision = decision_rule(runs, "3d", arms)
    assert decision["default"] == CURRENT_DEFAULT
    assert decision["eligible"] == [CURRENT_DEFAULT]
    assert decision["aurc"][CURRENT_DEFAULT]["high"] < 0
    # no arm lowers AURC: the least Dice cost, and the reason says so
    for key in list(runs):
        if key[0] == CURRENT_DEFAULT:
            runs[key]["metrics"]["aurc"] = runs[("baseline", key[1], key[2])]["metrics"]["aurc"] + 1e-6
    decision = decision_rule(runs, "3d", arms)
    assert decision["default"] == CURRENT_DEFAULT
    assert decision["reason"].startswith("no arm lowered AURC")


def test_evaluate_run_against_dice_from_scratch():
    from reference_models.evaluate import Prediction

    rng = np.random.default_rng(2)
    preds = []
    for i in range(3):
        label = rng.integers(0, 3, (6, 7)).astype(np.uint8)
        pred = np.where(rng.random((6, 7)) < 0.8, label, rng.integers(0, 3, (6, 7))).astype(np.uint8)
        preds.append(Prediction(f"im{i}", "cv", None, pred, label, rng.random((6, 7)).astype(np.float32)))
    m = protocol.evaluate_run(preds, 3)
    for k in (1, 2):
        want = np.mean(
            [
                2 * np.sum((p.pred == k) & (p.label == k)) / (np.sum(p.pred == k) + np.sum(p.label == k))
                for p in preds
            ]
        )
        assert m["dice_per_structure"][k - 1] == pytest.approx(want)

    def dice(p, k):
        return 2 * np.sum((p.pred == k) & (p.label == k)) / (np.sum(p.pred == k) + np.sum(p.label == k))

    per_image = [np.mean([dice(p, k) for k in (1, 2)]) for p in preds]
    assert m["dice_full"] == pytest.approx(np.mean(per_image))
    assert m["voxel_error"] == pytest.approx(np.mean([np.mean(p.pred != p.label) for p in preds]))
    assert m["referred_share_of_foreground"]["0.99"] == pytest.approx(0.01 / m["foreground_share"])


@pytest.mark.slow
def test_protocol_command_at_a_tiny_size_resumes(tmp_path, monkeypatch):
    """Three arms, one seed, synthetic GlaS at a tiny size: every run writes its file; a second call trains
    nothing and gives the same tables."""
    arms = (protocol.BASELINE, CONTROL, protocol.ABLATION[0])
    monkeypatch.setitem(protocol.PROTOCOLS, "2d", protocol.PROTOCOLS["2d"] | {"tuning": arms})
    monkeypatch.setattr(protocol, "SEEDS", (0,))
    base = {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "patch": 32, "width": 0.0625}
    # a small synthetic GlaS (the default 24 + 20 images of about 136 x 176 took most of the time to evaluate)
    small = {"n_train": 4, "n_test_a": 3, "n_test_b": 4, "height_range": (36, 48), "width_range": (40, 56)}
    base["extra"] = {"synthetic": small}
    lines = []
    first = protocol.run_protocol("2d", tmp_path, stage="tuning", jobs=2, base=base, echo=lines.append)
    files = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert files == sorted(f"{a.name}_foldall_seed0.json" for a in arms)
    record = json.loads((tmp_path / "runs" / files[0]).read_text())
    assert record["config"]["epochs"] == 1 and 0 <= record["metrics"]["aurc"] <= 1
    assert (tmp_path / "protocol.md").is_file() and (tmp_path / "figures" / "tuning.png").is_file()
    lines.clear()
    again = protocol.run_protocol("2d", tmp_path, stage="tuning", jobs=2, base=base, echo=lines.append)
    assert not any("runs to do" in line for line in lines)  # nothing trained again
    assert json.dumps(again["tuning"], sort_keys=True) == json.dumps(first["tuning"], sort_keys=True)


def _full_metrics(rng) -> dict:
    """Every metric a run file holds, random."""
    cov = [f"{c:g}" for c in protocol.REFERRAL_COVERAGES]
    return {
        "aurc": rng.uniform(0.005, 0.02),
        "voxel_e_aurc": rng.uniform(0.001, 0.003),
        "dice_full": rng.uniform(0.8, 0.9),
        "gamma": {f"{c:g}": rng.uniform(0.3, 0.6) for c in protocol.GAMMA_COVERAGES},
        "dice_referred": {c: rng.uniform(0.85, 0.95) for c in cov},
        "foreground_share": rng.uniform(0.07, 0.08),
        "dice_per_structure": list(rng.uniform(0.5, 0.9, 7)),
    }


def test_analyse_writes_every_table_and_figure(tmp_path):
    """A whole 3D study of random run files: the Markdown holds each arm's mean e-AURC (recomputed here),
    the by-fold table and the decision; the three figures are written."""
    rng = np.random.default_rng(3)
    spec = protocol.PROTOCOLS["3d"]
    (tmp_path / "runs").mkdir()
    runs = {}
    arms = [s.name for s in spec["tuning"]]
    for fold in (0, *spec["evaluation_folds"]):
        for seed in protocol.SEEDS:
            for arm in arms:  # every arm on every fold: the candidate is whichever the rule picks
                record = {"setting": arm, "fold": fold, "seed": seed, "metrics": _full_metrics(rng)}
                runs[(arm, fold, seed)] = record
                (tmp_path / "runs" / f"{arm}_fold{fold}_seed{seed}.json").write_text(json.dumps(record))
    result = protocol.analyse("3d", tmp_path, echo=lambda _: None)
    text = (tmp_path / "protocol.md").read_text()
    pick = result["candidate"]
    assert pick in arms and "decision" in result
    for arm in ["baseline", CONTROL.name, pick, CURRENT_DEFAULT]:
        e_aurc = np.mean(
            [runs[(arm, f, s)]["metrics"]["voxel_e_aurc"] for f in (1, 2, 3, 4) for s in (0, 1, 2)]
        )
        assert f"| {arm} | {100 * e_aurc:.2f} |" in text
    assert "| arm | fold 1 | fold 2 | fold 3 | fold 4 |" in text
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["evaluation.png", "tuning.png", "weight_sweep.png"]
