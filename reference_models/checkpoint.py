"""What the trainers say about a checkpoint that ``--resume`` cannot use (one line, how to start over)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointError", "other_settings", "unreadable"]


class CheckpointError(ValueError):
    """A checkpoint that ``--resume`` cannot continue from; the message names it and how to start over."""


def unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """A checkpoint that is empty, cut short or not a checkpoint of this trainer."""
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(reason) > 200:
        reason = reason[:197] + "..."
    msg = (
        f"checkpoint {path} cannot be read (empty, cut short or not a checkpoint of this trainer; {reason}); "
        "delete it to train this model from the start, or drop --resume to retrain every model."
    )
    return CheckpointError(msg)


def other_settings(path: Path) -> CheckpointError:
    """A checkpoint written with other training settings."""
    msg = (
        f"checkpoint {path} was written with other settings; delete it to train this model from the "
        "start with these settings, or drop --resume to retrain every model."
    )
    return CheckpointError(msg)
