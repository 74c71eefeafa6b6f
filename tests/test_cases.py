"""Case scores and case-level selective prediction against brute-force references written here: every
coverage of the step rule, every order of the cases, scipy's dilation and scikit-learn's AUROC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit import case_referral, case_score, case_scores, failure_auroc


def test_each_case_score_against_its_definition():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    u = rng.random((9, 10, 11))
    pred = np.zeros((9, 10, 11), dtype=np.int64)
    pred[3:5, 4:6, 2:4] = 2
    assert case_score(u) == pytest.approx(u.mean())
    assert case_score(u, method="mean-foreground", pred=pred) == pytest.approx(u[pred > 0].mean())
    for radius in (0, 1, 3):
        band = (
            ndimage.binary_dilation(pred > 0, structure=np.ones((3, 3, 3)), iterations=radius)
            if radius
            else pred > 0
        )
        got = case_score(u, method="foreground-band", pred=pred, radius=radius)
        assert got == pytest.approx(u[band].mean())
    assert case_score(u, method="quantile", quantile=0.9) == pytest.approx(np.quantile(u, 0.9))
    flat = np.sort(u.reshape(-1))[::-1]
    for fraction in (0.001, 0.01, 0.5, 1.0):
        k = max(1, int(np.ceil(fraction * u.size)))
        assert case_score(u, method="top-fraction", fraction=fraction) == pytest.approx(flat[:k].mean())
    assert case_score(u, method="above-threshold", threshold=0.7) == pytest.approx((u > 0.7).mean())
    # no predicted foreground: the whole image
    empty = np.zeros_like(pred)
    for method in ("mean-foreground", "foreground-band"):
        assert case_score(u, method=method, pred=empty) == pytest.approx(u.mean())


def test_case_scores_on_torch_and_per_case():
    torch = pytest.importorskip("torch")
    maps = [torch.rand(4, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    preds = [torch.ones(4, 5, dtype=torch.int64) for _ in range(3)]
    got = case_scores(maps, preds=preds, method="mean-foreground")
    np.testing.assert_allclose(got, [float(m.double().mean()) for m in maps])


def _brute_referral(s, r):
    """The step rule from its definition: at each distinct score (from the lowest) keep every case at or
    below it; AURC and AUGRC add the coverage step times the selective / generalized risk."""
    n = len(s)
    area = general = 0.0
    previous = 0.0
    for t in sorted(set(s)):
        kept = [i for i in range(n) if s[i] <= t]
        c = len(kept) / n
        area += (c - previous) * sum(r[i] for i in kept) / len(kept)
        general += (c - previous) * sum(r[i] for i in kept) / n
        previous = c
    return area, general


@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])), min_size=1, max_size=7
    )
)
def test_case_referral_against_every_order(pairs):
    s = np.array([float(a) for a, _ in pairs])  # few distinct scores: many ties
    r = np.array([b for _, b in pairs])
    got = case_referral(s, r, failure_threshold=0.3)
    area, general = _brute_referral(list(s), list(r))
    assert got.aurc == pytest.approx(area, abs=1e-12)
    assert got.augrc == pytest.approx(general, abs=1e-12)
    # the best order: the lowest generalized area over every order of the cases (scores = their rank)
    best = min(  # every order of the cases, scored by their rank in it
        _brute_referral(list(range(len(s))), [r[i] for i in order])[1]
        for order in itertools.permutations(range(len(s)))
    )
    assert got.e_augrc == pytest.approx(general - best, abs=1e-12)
    best_aurc = min(
        _brute_referral(list(range(len(s))), [r[i] for i in order])[0]
        for order in itertools.permutations(range(len(s)))
    )
    assert got.e_aurc == pytest.approx(area - best_aurc, abs=1e-12)
    assert got.e_aurc >= -1e-12 and got.e_augrc >= -1e-12
    assert list(got.order) == sorted(range(len(s)), key=lambda i: (-s[i], i))


def test_partial_aurc_is_the_mean_risk_over_the_range():
    rng = np.random.default_rng(1)
    s, r = rng.random(20), rng.random(20)
    got = case_referral(s, r, coverage_range=(0.3, 0.8))
    order = np.argsort(s)
    grid = (np.arange(200000) + 0.5) / 200000 * 0.5 + 0.3  # midpoints of the range
    kept = np.ceil(grid * 20).astype(int)  # the step rule: risk of the first k cases for c in ((k-1)/n, k/n]
    risk = np.array([r[order[:k]].mean() for k in range(1, 21)])
    assert got.partial_aurc == pytest.approx(risk[kept - 1].mean(), rel=1e-6)
    full = case_referral(s, r, coverage_range=(0.0, 1.0))
    assert full.partial_aurc == pytest.approx(full.aurc, rel=1e-12)


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=2, max_size=30))
def test_failure_auroc_equals_scikit_learn(pairs):
    metrics = pytest.importorskip("sklearn.metrics")
    s = np.array([float(a) for a, _ in pairs])
    failed = np.array([b for _, b in pairs])
    r = np.where(failed, 0.9, 0.1)
    got = failure_auroc(s, r, threshold=0.5)
    if failed.all() or not failed.any():
        assert np.isnan(got)
    else:
        assert got == pytest.approx(metrics.roc_auc_score(failed, s), abs=1e-12)


def test_refusals():
    u = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match="`method` must be one of mean, mean-foreground"):
        case_score(u, method="max")
    with pytest.raises(ValueError, match="`pred` is needed for method='mean-foreground'"):
        case_score(u, method="mean-foreground")
    with pytest.raises(ValueError, match="`pred`"):
        case_score(u, method="mean-foreground", pred=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="`uncertainty` is empty"):
        case_score(np.array([]))
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        case_score(np.array([np.nan]))
    with pytest.raises(TypeError, match="`uncertainty` must hold real numbers"):
        case_score(np.array([True]))
    with pytest.raises(ValueError, match=r"`quantile` must be in \[0, 1\]"):
        case_score(u, method="quantile", quantile=1.5)
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
        case_score(u, method="top-fraction", fraction=0)
    with pytest.raises(TypeError, match="`threshold` must be a number"):
        case_score(u, method="above-threshold", threshold="0.5")
    with pytest.raises(ValueError, match="`radius` must be an integer >= 0"):
        case_score(u, method="foreground-band", pred=np.array([1, 0]), radius=-1)
    with pytest.raises(ValueError, match="`preds` must hold one map per case"):
        case_scores([u, u], preds=[u])
    with pytest.raises(ValueError, match="`scores` and `risks` must have one value per case"):
        case_referral([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"`risks` must lie in \[0, 1\]"):
        case_referral([0.1, 0.2], [0.1, 1.5])
    with pytest.raises(ValueError, match="`scores` must be finite"):
        case_referral([0.1, np.inf], [0.1, 0.2])
    with pytest.raises(ValueError, match="`scores` is empty"):
        case_referral([], [])
    with pytest.raises(ValueError, match="`coverage_range` must be increasing"):
        case_referral([0.1, 0.2], [0.1, 0.2], coverage_range=(0.8, 0.5))
    with pytest.raises(ValueError, match=r"`threshold` must be in \[0, 1\]"):
        failure_auroc([0.1, 0.2], [0.1, 0.2], threshold=2)


# --- evaluate --case-score: the report's case section, from scratch -----------------------------------------


def test_evaluate_case_section_from_scratch(tmp_path, capsys):
    import json

    from selectivekit.cli import main
    from tests.conftest import evaluate_argv, npy_case_folders

    rng = np.random.default_rng(21)
    preds, labels, us = [], [], []
    for i in range(12):
        label = rng.integers(0, 3, size=(9, 8))
        wrong = rng.random(label.shape) < 0.05 + 0.04 * i  # cases of growing error
        preds.append(np.where(wrong, (label + 1) % 3, label))
        labels.append(label)
        us.append((rng.random(label.shape) * 0.5 + 0.5 * wrong).astype(np.float32))
    folders = npy_case_folders(tmp_path / "data", preds, labels, us)
    out = tmp_path / "report"
    argv = evaluate_argv(folders, out, "--case-score", "mean-foreground", "--failure-dice", "0.7")
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    cases = report["cases"]

    def dice(pred, label):  # mean over classes 1 and 2; a class absent from both counts 1
        values = []
        for k in (1, 2):
            p, t = pred == k, label == k
            total = p.sum() + t.sum()
            values.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
        return float(np.mean(values))

    risks = np.array([1 - dice(p, t) for p, t in zip(preds, labels, strict=True)])
    fg = [p > 0 for p in preds]
    scores = np.array([u[m].mean() if m.any() else u.mean() for u, m in zip(us, fg, strict=True)])
    names = [f"case_{i}" for i in range(12)]
    by_name = {row["name"]: row for row in report["per_image"]}
    np.testing.assert_allclose([by_name[n]["case_score"] for n in names], scores, rtol=1e-6)
    # the step rule over the cases (ties accepted together), by a loop
    order = np.argsort(scores, kind="stable")
    area, start, total_risk = 0.0, 0, 0.0
    while start < 12:
        stop = start
        while stop < 12 and scores[order[stop]] == scores[order[start]]:
            stop += 1
        total_risk += risks[order[start:stop]].sum()
        area += (stop - start) / 12 * total_risk / stop
        start = stop
    assert cases["aurc"] == pytest.approx(area, rel=1e-9)
    assert cases["failures"] == int(np.sum(risks > 0.3))
    fails = risks > 0.3
    pairs = [(a, b) for a in scores[fails] for b in scores[~fails]]
    auroc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert cases["failure_auroc"] == pytest.approx(auroc)
    assert cases["referral_order"] == [names[i] for i in np.argsort(-scores, kind="stable")]
    markdown = (out / "report.md").read_text()
    assert (
        "## Which cases first" in markdown and "![Cases referred whole](case_risk_coverage.png)" in markdown
    )
    assert (out / "case_risk_coverage.png").stat().st_size > 1000
    # with --ci: bootstrap intervals over the cases, those of bootstrap_ci on the same scores and risks
    from selectivekit import bootstrap_ci

    ci = evaluate_argv(folders, tmp_path / "ci", "--case-score", "mean-foreground", "--ci", "0.9")
    assert main([*ci, "--n-resamples", "400", "--seed", "3"]) == 0
    intervals = json.loads((tmp_path / "ci" / "report.json").read_text())["cases"]["intervals"]
    order = [names.index(name) for name in sorted(names)]  # the report's (and the resamples') case order
    want = bootstrap_ci(
        ["aurc", "e_aurc", "augrc"], scores[order], risk=risks[order], confidence=0.9, n_resamples=400, seed=3
    )
    for key in ("aurc", "e_aurc", "augrc"):
        assert intervals[key]["low"] == pytest.approx(want.intervals[key].low, rel=1e-6)
        assert intervals[key]["high"] == pytest.approx(want.intervals[key].high, rel=1e-6)
        assert intervals[key]["low"] <= intervals[key]["high"]  # (BCa may leave the estimate outside)
    assert "90 % bootstrap intervals over the cases" in (tmp_path / "ci" / "report.md").read_text()
    # --case-cost/--voxel-cost: the best Dice per budget, that of referral_plans on the same cases and scores
    budget_out = tmp_path / "budget"
    argv = evaluate_argv(folders, budget_out, "--case-score", "mean-foreground", "--workers", "2")
    assert main([*argv, "--case-cost", "30", "--voxel-cost", "1"]) == 0
    budget = json.loads((budget_out / "report.json").read_text())["cases"]["budget"]
    plans = sk.referral_plans(
        [preds[i] for i in order], [labels[i] for i in order], [us[i] for i in order], scores[order],
        num_classes=3, case_cost=30.0, voxel_cost=1.0,
    )  # fmt: skip
    assert budget["budgets"][-1] == min(30.0 * 12, 72.0 * 12)
    for key, kind in (("best_mix", "any"), ("voxels_only", "none"), ("cases_only", "only")):
        np.testing.assert_allclose(budget[key], plans.dice_within(budget["budgets"], cases=kind), atol=1e-12)
    assert "### One expert budget over cases and voxels" in (budget_out / "report.md").read_text()
    assert (budget_out / "budget.png").stat().st_size > 1000
    # --failure-dice alone is a usage error
    capsys.readouterr()
    assert main([*evaluate_argv(folders, tmp_path / "o", "--case-score", "mean"), "--case-cost", "1"]) == 2
    assert "`--case-cost` and `--voxel-cost` go together" in capsys.readouterr().err
    assert main(evaluate_argv(folders, tmp_path / "o", "--failure-dice", "0.7")) == 2
    assert "`--failure-dice` applies to `--case-score` only" in capsys.readouterr().err
