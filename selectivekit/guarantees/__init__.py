"""Confidence intervals, paired model comparison and referral thresholds with a guaranteed risk.

Three questions decide whether a selective model can be deployed: how sure is a measured number
([`bootstrap_ci`][selectivekit.bootstrap_ci]), is model B better than model A on the same images or is the
difference noise
([`compare_models`][selectivekit.compare_models]), and which threshold keeps the risk on new patients below a
target
([`guaranteed_risk_threshold`][selectivekit.guaranteed_risk_threshold],
[`guaranteed_dice_threshold`][selectivekit.guaranteed_dice_threshold]).

Units of resampling
-------------------
The voxels of one image are not independent, so every segmentation method here treats **images** as the
exchangeable units: the bootstrap resamples images, the permutation test swaps two models' outputs image by
image, and the thresholds are calibrated on a set of images. Instance metrics (AURC, e-AURC, AUGRC)
resample instances, or the groups of a ``groups=`` array (e.g. the image of each voxel).

How a resample stays cheap
--------------------------
With a global threshold the referral point of a resampled set moves with the resample, so a resample is not
a sum of per-image numbers. It is, however, a weighted sum over per-image state computed once: for image
``i`` the number of its voxels with ``u <= t`` (``C_i(t)``) and its Dice after referral ``D_i(t)``, a step
function that changes only at the image's wrong voxels. With multiplicities ``w`` (how often each image is
drawn), ``N_i`` voxels per image and ``A_ij = sum over the voxels v of image i of D_j(u_v)``,

    aurc_dice(w) = 1 - (w^T A w) / ((w . N) (w . 1))

exactly (the step rule over the thresholds of the resampled set), and the Dice at a coverage needs the
threshold where ``sum_i w_i C_i(t)`` reaches the required count: a vectorized bisection over the sorted
distinct values. Nothing is re-sorted per resample.

Modules
-------
One concern each, all private; every public name is imported here:

- ``_state``: [`ImageState`][selectivekit.guarantees.ImageState], the per-image step functions, and their
  ``.npz`` files;
- ``_bootstrap``: [`bootstrap_ci`][selectivekit.bootstrap_ci] and
  [`bootstrap_state`][selectivekit.guarantees.bootstrap_state], the resampled statistics and SciPy's
  intervals;
- ``_comparison``: [`compare_models`][selectivekit.compare_models] and
  [`compare_states`][selectivekit.guarantees.compare_states];
- ``_thresholds``: the two guaranteed thresholds;
- ``_bounds``: the exact binomial, Hoeffding–Bentkus and Waudby-Smith–Ramdas upper confidence bounds;
- ``_joint``: one threshold for several Dice risks at once
  ([`guaranteed_joint_threshold`][selectivekit.guarantees.guaranteed_joint_threshold]), one per structure
  ([`guaranteed_class_thresholds`][selectivekit.guarantees.guaranteed_class_thresholds]), and the
  fixed-sequence walk they share;
- ``_common``: the lazy SciPy import, the shared argument checks and the resample weights.

Argument checks and array helpers come from ``selectivekit._lib``; ``aurc_optimal`` from
`selectivekit.risk_coverage` (a public name of that module, not exported at the top level).

Lower-level pieces, public in this module but not re-exported at the top level:
[`ImageState`][selectivekit.guarantees.ImageState] (the
per-image state, buildable image by image and savable),
[`bootstrap_state`][selectivekit.guarantees.bootstrap_state] and
[`compare_states`][selectivekit.guarantees.compare_states],
which the command line uses to stream a folder and to compare two saved runs.

SciPy (``pip install scipy``, part of the ``selectivekit[stats]`` extra) is imported lazily: its
``scipy.stats.bootstrap`` draws the resamples and turns the bootstrap distributions into percentile, basic
and BCa intervals (with its jackknife acceleration), ``scipy.stats.permutation_test`` runs the paired
permutation test (exact when ``2**n_images <= n_permutations``), ``scipy.special``/``scipy.stats.binom``
give the binomial tails of the risk bounds, and ``scipy.optimize.brentq`` inverts the Hoeffding–Bentkus
p-value.
"""

from ._bootstrap import BootstrapResult, ConfidenceInterval, bootstrap_ci, bootstrap_state
from ._comparison import ModelComparison, PairedDifference, compare_models, compare_states
from ._joint import (
    ClassThresholds,
    JointThreshold,
    guaranteed_class_thresholds,
    guaranteed_joint_threshold,
)
from ._state import ImageState
from ._state import image_state as _image_state  # noqa: F401 (read by tests/test_cli_guarantees.py)
from ._thresholds import (
    DiceThreshold,
    RiskThreshold,
    guaranteed_dice_threshold,
    guaranteed_risk_threshold,
)

__all__ = [
    "BootstrapResult",
    "ClassThresholds",
    "ConfidenceInterval",
    "DiceThreshold",
    "ImageState",
    "JointThreshold",
    "ModelComparison",
    "PairedDifference",
    "RiskThreshold",
    "bootstrap_ci",
    "bootstrap_state",
    "compare_models",
    "compare_states",
    "guaranteed_class_thresholds",
    "guaranteed_dice_threshold",
    "guaranteed_joint_threshold",
    "guaranteed_risk_threshold",
]
