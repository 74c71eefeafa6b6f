"""Spreads over seeds and paired comparisons (ours minus baseline) for the reproduction report.

Two questions, two units of replication:

- **Over seeds** (is the difference larger than what retraining with another seed gives?): for each
  training seed ``s`` the difference ``d_s = ours_s - baseline_s`` of a headline number (AURC, Dice at full
  coverage, Dice at each coverage). Reported: mean, standard deviation (``ddof=1``), a 95% Student-t
  interval and the two-sided paired t-test p-value (``scipy.stats.ttest_1samp`` of the ``d_s``). With one
  seed there is no spread and the interval and p-value are ``None``.
- **Per image** (the paper's Tables 2–3 compare images): for each held-out image the Dice difference at a
  coverage, averaged over the seeds. Reported: mean, a 95% Student-t interval of the mean difference, the
  two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; ``1.0`` when every difference is 0) and
  the share of images where ours is higher.

Images of one run share a model, so the per-image test answers "on these images, with these models", not
"for a new training run"; the over-seeds test answers the second question. Report both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["mean_std", "paired_over_images", "paired_over_seeds", "seed_summary"]


def _t_interval(values: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = float(np.mean(values))
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return [mean - half, mean + half]


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` with the sample standard deviation (``ddof=1``; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def paired_over_seeds(ours: Sequence[float], baseline: Sequence[float]) -> dict:
    """Mean ± std of ``ours - baseline`` over seeds, its 95% t-interval and the paired t-test p-value."""
    from scipy import stats

    d = np.asarray(ours, np.float64) - np.asarray(baseline, np.float64)
    out = mean_std(d) | {"ci95": _t_interval(d), "p_value": None, "test": "paired t-test over seeds"}
    if len(d) > 1:
        out["p_value"] = 1.0 if np.all(d == d[0]) and d[0] == 0 else float(stats.ttest_1samp(d, 0.0).pvalue)
    return out


def paired_over_images(ours: np.ndarray, baseline: np.ndarray) -> dict:
    """Per-image differences ``ours - baseline`` (one value per image): mean, 95% t-interval, Wilcoxon p."""
    from scipy import stats

    d = np.asarray(ours, np.float64) - np.asarray(baseline, np.float64)
    out = {
        "mean": float(d.mean()),
        "ci95": _t_interval(d),
        "n_images": len(d),
        "share_ours_higher": float(np.mean(d > 0)),
        "test": "Wilcoxon signed-rank over images",
    }
    out["p_value"] = 1.0 if np.all(d == 0) else float(stats.wilcoxon(d).pvalue)
    return out


def seed_summary(per_seed: Sequence[dict]) -> dict:
    """Mean ± std across seeds of every headline number of one model's report entry ``M``."""
    keys = list(per_seed[0]["dice_at_coverage"])
    return {
        "aurc": mean_std([m["aurc"] for m in per_seed]),
        "dice_full_coverage": mean_std([m["dice_full_coverage"] for m in per_seed]),
        "dice_at_coverage": {
            key: {
                stat: mean_std([m["dice_at_coverage"][key][stat] for m in per_seed])
                for stat in ("mean", "p5", "coverage")
            }
            for key in keys
        },
    }
