"""The console commands of selectivekit, started so that a Ctrl-C while the libraries load prints one line.

The commands import this small module instead of the package: ``import selectivekit`` loads NumPy (and the
command line loads more), and a Ctrl-C that arrives inside an import would otherwise end in Python's
traceback before the command line's own handling is in place.
"""

from __future__ import annotations

import importlib
import signal
import sys

__all__ = ["selectivekit", "selectivekit_nnunet"]


def _run(target: str, prog: str) -> int:
    module, _, name = target.partition(":")
    # A KeyboardInterrupt raised inside an extension module's import (NumPy's) can surface as an
    # ImportError, so a Ctrl-C is only noted while the command loads, and acted on once the imports are done.
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        main = getattr(importlib.import_module(module), name)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(f"{prog}: interrupted while starting; nothing was written.", file=sys.stderr)
        return 130
    return main()


def selectivekit() -> int:
    """``selectivekit ...``: the evaluation command line."""
    return _run("selectivekit.cli:main", "selectivekit")


def selectivekit_nnunet() -> int:
    """``selectivekit-nnunet ...``: where nnU-Net finds the uncertainty-aware trainers."""
    return _run("selectivekit.adapters.nnunet:main", "selectivekit-nnunet")
