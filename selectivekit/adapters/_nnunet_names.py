"""The nnU-Net trainers' names, short schedules and default weight.

Read by the public module `selectivekit.adapters.nnunet` (which imports neither nnU-Net nor torch) and by
the trainer classes in ``_nnunet_trainers`` (which import both): each imports this module, not the other.
"""

from __future__ import annotations

from ..loss_setting import LOSS_SETTINGS

#: Weight of the uncertainty term in the trainers (``uncertainty_weight``), reached after the warm-up and
#: the ramp (``uncertainty_warmup``/``uncertainty_ramp``): the library's default setting,
#: ``selectivekit.LOSS_SETTINGS["default"]``, which every trainer attribute reads. Change it per trainer by
#: subclassing.
DEFAULT_WEIGHT = LOSS_SETTINGS["default"].weight

#: Epoch counts of the short-schedule variants (``nnUNetTrainerUncertaintyAware_5epochs``, ...).
SHORT_SCHEDULES = (1, 5, 10, 20, 50, 100, 250)

#: The two trainers; each has a variant per short schedule.
BASE_TRAINERS = ("nnUNetTrainerUncertaintyAware", "nnUNetTrainerUncertaintyAwareAllScales")


def schedule_suffix(epochs: int) -> str:
    """The suffix of a short-schedule variant, as nnU-Net names its own: ``_1epoch``, ``_5epochs``, ..."""
    return "_1epoch" if epochs == 1 else f"_{epochs}epochs"


#: Every trainer name that ``nnUNetv2_train -tr`` accepts once the trainers are installed.
TRAINER_NAMES = tuple(
    [*BASE_TRAINERS]
    + [base + schedule_suffix(epochs) for base in BASE_TRAINERS for epochs in SHORT_SCHEDULES]
)
