"""The console commands of selectivekit, started so that a Ctrl-C while the libraries load prints one line.

The commands import this small module instead of the package: ``import selectivekit`` loads NumPy (and the
command line loads more), and a Ctrl-C that arrives inside an import would otherwise end in Python's
traceback before the command line's own handling is in place.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["selectivekit", "selectivekit_nnunet"]


def _run(target: str, prog: str) -> int:
    module, _, name = target.partition(":")
    try:
        main = getattr(importlib.import_module(module), name)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted while starting; nothing was written.", file=sys.stderr)
        return 130
    return main()


def selectivekit() -> int:
    """``selectivekit ...``: the evaluation command line."""
    return _run("selectivekit.cli:main", "selectivekit")


def selectivekit_nnunet() -> int:
    """``selectivekit-nnunet ...``: where nnU-Net finds the uncertainty-aware trainers."""
    return _run("selectivekit.adapters.nnunet:main", "selectivekit-nnunet")
