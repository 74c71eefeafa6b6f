"""selectivekit: selective prediction for segmentation."""

from .uncertainty import (
    correctness,
    entropy_uncertainty,
    max_softmax_uncertainty,
    uncertainty_from_logits,
)

__version__ = "0.1.0"

__all__ = [
    "correctness",
    "entropy_uncertainty",
    "max_softmax_uncertainty",
    "uncertainty_from_logits",
]
