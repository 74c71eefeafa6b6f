"""What every command shares: the program name, the two kinds of error, the flags' vocabulary in messages,
and the outputs written (recorded, so that an interrupted run can say what it left in place)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..report import ReportError, atomic_folder, atomic_write_text

__all__ = [
    "PROG",
    "STATE_FILE",
    "WRITTEN",
    "CommandError",
    "UsageError",
    "call_with_flag_names",
    "needs_scipy",
    "one_line",
    "output_file",
    "output_folder",
    "refuse_folder",
    "save_figure",
    "shortened",
    "translated",
    "with_flag_names",
]

PROG = "selectivekit"
STATE_FILE = "bootstrap_state.npz"
"""Per-image state written by ``evaluate --ci``; ``compare`` reads it for the paired tests."""

#: The parameter names and role keys of [`selectivekit.io`][selectivekit.io] and
#: [`selectivekit.report`][selectivekit.report], as the
#: command line's flags (their messages name parameters; the user typed flags).
PARAMETER_FLAGS = {
    "`pred`": "`--pred`",
    "`label`": "`--label`",
    "`uncertainty`": "`--uncertainty`",
    "`probs`": "`--probs`",
    "`label_map`": "`--label-map`",
    "`label_map_labels`": "`--label-map-labels`",
    "`label_map_pred`": "`--label-map-pred`",
    "`channel_axis`": "`--channel-axis`",
    "`reverse_axes`": "`--reverse-axes`",
    "`ignore_affine`": "`--ignore-affine`",
    "`regions`": "`--regions`",
    "`workers`": "`--workers`",
    "`num_classes`": "--num-classes",
    "`coverages`": "`--coverages`",
    "`out`": "`--out`",
    "`shard`": "`--shard`",
    "`states`": "`STATES`",
    "`max_voxels`": "`--max-voxels`",
    "`uncertainty_measure`": "`--uncertainty-measure`",
    "`temperature`": "`--temperature`",
    '`partial_roles=("label",)`': "`--cases predicted`",
}
_PARAMETER_PATTERN = re.compile("|".join(re.escape(name) for name in PARAMETER_FLAGS))
_PROBS_MEMBER = re.compile(r"`probs#(\d+)`")
Result = TypeVar("Result")


class CommandError(Exception):
    """A problem with the user's files or data; printed as one line, exit status 1."""


class UsageError(CommandError):
    """Options that do not go together; printed as one line, exit status 2 (like argparse's errors)."""


def with_flag_names(text: str) -> str:
    """A message of the library with its parameter names and role keys written as this command's flags (the
    role ``probs#2`` of the second ``--probs`` folder as ``--probs`` #2)."""
    text = _PROBS_MEMBER.sub(r"`--probs` #\1", text)
    return _PARAMETER_PATTERN.sub(lambda match: PARAMETER_FLAGS[match.group(0)], text)


def translated(exc: Exception) -> Exception:
    """The same error, its message in the vocabulary of the command line."""
    text = with_flag_names(str(exc))
    if text == str(exc):
        return exc
    try:
        return type(exc)(text)
    except TypeError:  # an error class with another constructor: keep it as it is
        return exc


def call_with_flag_names(call: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """``call(*args, **kwargs)``, its error messages in the vocabulary of the command line."""
    try:
        return call(*args, **kwargs)
    except (ValueError, TypeError, OSError) as exc:
        new = translated(exc)
        if new is exc:
            raise
        raise new from exc


#: What this run has put in place (``main`` says so when it is interrupted afterwards).
WRITTEN: list[Path] = []


@contextmanager
def output_folder(out: Path, marker: str) -> Iterator[Path]:
    """[`selectivekit.report.atomic_folder`][selectivekit.report.atomic_folder], its errors in the vocabulary
    of the command line."""
    try:
        with atomic_folder(out, marker, on_commit=lambda: WRITTEN.append(out)) as staging:
            yield staging
    except ReportError as exc:
        new = translated(exc)
        if new is exc:
            raise
        raise new from exc


def output_file(path: Path, text: str) -> None:
    """[`selectivekit.report.atomic_write_text`][selectivekit.report.atomic_write_text], recorded."""
    atomic_write_text(path, text, on_commit=lambda: WRITTEN.append(path))


def refuse_folder(path: Path, option: str) -> None:
    """A one-line error when the file name ``option`` gives is a folder."""
    if path.is_dir():
        msg = f"`{option}` must be a file name, got the folder {str(path)!r}."
        raise CommandError(msg)


def one_line(text: str) -> str:
    """A message on one line: the line breaks of multi-line messages (nibabel's, argparse's) folded."""
    return re.sub(r"\s*\n\s*", " ", text).strip()


def shortened(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def needs_scipy() -> None:
    """A one-line error when SciPy (intervals, paired tests, calibration) is not installed."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        msg = (
            "intervals, paired tests and calibration need SciPy, which is not installed; install it with: "
            "pip install 'selectivekit[stats]'."
        )
        raise CommandError(msg)


def save_figure(figure: Any, path: Path) -> None:
    # selectivekit.plotting builds figures without pyplot: no backend or open-figure state to manage
    figure.savefig(path, dpi=120)
