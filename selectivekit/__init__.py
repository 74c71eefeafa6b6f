"""selectivekit: selective prediction for segmentation.

Exact, tie-correct metrics for uncertainty maps in any array-API library, the uncertainty-aware ranking
loss, and coverage-aware Dice with referral. The documentation is the mkdocs site built from ``docs/``.

Theorem 1's scalar identities (``psi_c_from``, ``gamma_bounds``, ``dpsi_dgamma``, ``dpsi_dpsi1``) live in
`selectivekit.theorem`; their top-level names are aliases, kept for existing code.
"""

from . import theorem
from ._version import __version__ as __version__  # the one place the version is written
from .budget import ReferralPlans, referral_plans
from .calibration import (
    CalibrationAccumulator,
    CalibrationBins,
    CalibrationResult,
    brier_score,
    calibration_bins,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)
from .cases import CASE_SCORES, CaseReferral, case_referral, case_score, case_scores, failure_auroc
from .guarantees import (
    BootstrapResult,
    ConfidenceInterval,
    DiceThreshold,
    ModelComparison,
    PairedDifference,
    RiskThreshold,
    bootstrap_ci,
    compare_models,
    guaranteed_dice_threshold,
    guaranteed_risk_threshold,
)
from .loss import MarginLossOptions, margin_loss_from_logits, uncertainty_margin_loss
from .loss_setting import LOSS_SETTINGS, LossSetting, WeightSchedule, get_loss_setting, uncertainty_weight
from .predictive import (
    UNCERTAINTY_MEASURES,
    PredictiveAccumulator,
    PredictiveUncertainty,
    predictive_uncertainty,
)
from .risk_coverage import (
    RiskCoverageCurve,
    augrc,
    aurc,
    coverage_at_risk,
    e_aurc,
    risk_at_coverage,
    risk_coverage_curve,
)
from .segmentation import (
    DiceAtCoverage,
    DiceCoverageCurve,
    PerImageComparison,
    aurc_dice,
    compare_at_coverage,
    dice_at_coverage,
    dice_coverage_curve,
)
from .selective import (
    SelectiveSplit,
    coverage_threshold,
    gamma,
    selective_accuracy,
    selective_split,
)
from .streaming import RiskCoverageAccumulator, SegmentationAccumulator
from .temperature import TemperatureScaling, fit_temperature
from .theorem import Theorem1Check, check_theorem1, dpsi_dgamma, dpsi_dpsi1, gamma_bounds, psi_c_from
from .uncertainty import (
    correctness,
    entropy_uncertainty,
    max_softmax_uncertainty,
    sigmoid_uncertainty_from_logits,
    uncertainty_from_logits,
)

__all__ = [  # noqa: RUF022 (plain sorted(), which tests/test_api.py checks; ruff puts constants first)
    "BootstrapResult",
    "CASE_SCORES",
    "CalibrationAccumulator",
    "CalibrationBins",
    "CalibrationResult",
    "CaseReferral",
    "ConfidenceInterval",
    "DiceAtCoverage",
    "DiceCoverageCurve",
    "DiceThreshold",
    "LOSS_SETTINGS",
    "LossSetting",
    "MarginLossOptions",
    "ModelComparison",
    "PairedDifference",
    "PerImageComparison",
    "PredictiveAccumulator",
    "PredictiveUncertainty",
    "ReferralPlans",
    "RiskCoverageAccumulator",
    "RiskCoverageCurve",
    "RiskThreshold",
    "SegmentationAccumulator",
    "SelectiveSplit",
    "TemperatureScaling",
    "Theorem1Check",
    "UNCERTAINTY_MEASURES",
    "WeightSchedule",
    "augrc",
    "aurc",
    "aurc_dice",
    "bootstrap_ci",
    "brier_score",
    "calibration_bins",
    "case_referral",
    "case_score",
    "case_scores",
    "check_theorem1",
    "classwise_calibration_error",
    "compare_at_coverage",
    "compare_models",
    "correctness",
    "coverage_at_risk",
    "coverage_threshold",
    "dice_at_coverage",
    "dice_coverage_curve",
    "dpsi_dgamma",
    "dpsi_dpsi1",
    "e_aurc",
    "entropy_uncertainty",
    "expected_calibration_error",
    "failure_auroc",
    "fit_temperature",
    "gamma",
    "gamma_bounds",
    "get_loss_setting",
    "guaranteed_dice_threshold",
    "guaranteed_risk_threshold",
    "margin_loss_from_logits",
    "max_softmax_uncertainty",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "predictive_uncertainty",
    "psi_c_from",
    "referral_plans",
    "risk_at_coverage",
    "risk_coverage_curve",
    "selective_accuracy",
    "selective_split",
    "sigmoid_uncertainty_from_logits",
    "theorem",
    "uncertainty_from_logits",
    "uncertainty_margin_loss",
    "uncertainty_weight",
]
