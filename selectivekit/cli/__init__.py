"""The ``selectivekit`` command line: evaluate a folder of predictions, compare two evaluations.

``selectivekit evaluate`` reads predicted labels, true labels and uncertainty (or probability) maps from
folders (see [`selectivekit.io`][selectivekit.io] for the formats and the pairing rule) and writes the paper's
evaluation to ``--out``: ``report.json``, ``report.md`` (the Table-1 layout), ``curve.npz`` and PNG plots.
``selectivekit compare RUN_A RUN_B`` reads two such folders and writes the per-image comparison of the
paper's Figure 2 and a side-by-side table (with paired intervals and p-values when both runs were evaluated
with ``--ci``). ``selectivekit calibrate`` picks a referral threshold with a guaranteed Dice on a
calibration folder; ``selectivekit evaluate --threshold`` reports what that threshold gives on a test folder.

Every error is printed as one message on stderr with a non-zero exit status (1 for bad data or files,
2 for bad command-line usage); nothing is written unless the whole report is complete.

One module per command (``_evaluate``, ``_compare``, ``_calibrate``, ``_merge``: its options and its
``run``), over the shared pieces (``_common``: errors, vocabulary, outputs; ``_arguments``: option types and
groups; ``_reading``: the input folders; ``_interrupts``: Ctrl-C and SIGTERM). The Markdown and the terminal
summaries the commands write are rendered in ``selectivekit._report_sections``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import _calibrate, _compare, _evaluate, _merge
from ._arguments import Parser
from ._common import PROG as PROG
from ._common import STATE_FILE as STATE_FILE
from ._common import WRITTEN, CommandError, UsageError, one_line
from ._evaluate import DEFAULT_COVERAGES as DEFAULT_COVERAGES
from ._interrupts import Terminated, interrupts_ignored, terminate_as_interrupt
from ._threshold_file import THRESHOLD_KIND as THRESHOLD_KIND

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Selective segmentation: evaluate uncertainty maps with coverage-aware Dice.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (_evaluate, _compare, _calibrate, _merge):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 for bad files or data, 2 for bad usage, 130 when interrupted
        (Ctrl-C, SIGINT), 143 when terminated (SIGTERM).
    """
    WRITTEN.clear()
    command = None
    restore = terminate_as_interrupt()
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exc:  # argparse printed its one-line message (usage errors) or --help
            return exc.code if isinstance(exc.code, int) else 2
        command = args.command
        return int(args.handler(args))
    except KeyboardInterrupt as exc:
        with interrupts_ignored():  # a second Ctrl-C must not cut the one line short
            where = _where(command)
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            if WRITTEN:
                done = ", ".join(str(path) for path in WRITTEN)
                print(f"{where}: {what} after {done} was written in full.", file=sys.stderr)
            else:
                print(f"{where}: {what}; nothing was written.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except ModuleNotFoundError as exc:  # nibabel, Pillow, tqdm and matplotlib are optional dependencies
        print(
            f"{_where(command)}: error: this needs the package {exc.name!r}, which is not installed; "
            "install the command line's extras with: pip install 'selectivekit[io,plot]'.",
            file=sys.stderr,
        )
        return 1
    except (CommandError, ValueError, TypeError, OSError) as exc:
        print(f"{_where(command)}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except MemoryError as exc:  # not a bug of ours: the data, or what a file claims to hold, is too large
        print(
            f"{_where(command)}: error: not enough memory ({one_line(str(exc)) or 'MemoryError'}); lower "
            "`--max-memory` or `--max-voxels`, or check the input files.",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # never a traceback; the message is still specific
        print(
            f"{_where(command)}: internal error ({type(exc).__name__}: {one_line(str(exc))}); "
            "please report it.",
            file=sys.stderr,
        )
        return 1
    finally:
        restore()


def _where(command: str | None) -> str:
    """The program and command that a message comes from (the program alone before a command is known)."""
    return PROG if command is None else f"{PROG} {command}"
