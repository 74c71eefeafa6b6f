"""nnU-Net v2 trainers with the uncertainty-aware loss, and the command that lets nnU-Net find them.

``nnUNetv2_train`` looks up ``-tr NAME`` by importing the modules of its own package
``nnunetv2.training.nnUNetTrainer`` (nnU-Net 2.8 and later also search the folders in the
``nnUNet_extTrainer`` environment variable, but only after importing the whole package).
``selectivekit-nnunet install-trainer`` writes a one-line module there that imports the classes below; then
``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerUncertaintyAware`` trains with them.

Trainers (subclasses of ``nnUNetTrainer``; see `nnUNetTrainerUncertaintyAware`):

- ``nnUNetTrainerUncertaintyAware``: nnU-Net's loss plus ``uncertainty_weight`` times
  [`UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss] on the full-resolution output.
- ``nnUNetTrainerUncertaintyAwareAllScales``: the term on every deep-supervision output, weighted as nnU-Net
  weights its own loss there.
- ``_1epoch``, ``_5epochs``, ``_10epochs``, ``_20epochs``, ``_50epochs``, ``_100epochs``, ``_250epochs``
  variants of both, as nnU-Net names its short schedules.

Importing this module imports neither nnU-Net nor torch: the trainer classes are built on first access
(``from selectivekit.adapters.nnunet import nnUNetTrainerUncertaintyAware``), and that access raises an
``ImportError`` that says what to install when nnU-Net is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

# the names, schedules and weight live in a module the trainer classes import too (no import circle)
from ._nnunet_names import DEFAULT_WEIGHT as DEFAULT_WEIGHT
from ._nnunet_names import SHORT_SCHEDULES as SHORT_SCHEDULES
from ._nnunet_names import TRAINER_NAMES

#: File name of the module that ``install-trainer`` writes into nnU-Net's trainer package.
SHIM_NAME = "selectivekit_trainers.py"

__all__ = sorted(
    [
        "DEFAULT_WEIGHT",
        "NNUNetUncertaintyAwareLoss",
        "SHIM_NAME",
        "SHORT_SCHEDULES",
        "TRAINER_NAMES",
        "install_trainer",
        "main",
        "shim_path",
        "uninstall_trainer",
        *TRAINER_NAMES,
    ]
)

_LAZY = frozenset([*TRAINER_NAMES, "NNUNetUncertaintyAwareLoss"])

_SHIM = '''"""Written by `selectivekit-nnunet install-trainer`, so that nnUNetv2_train finds our trainers.

Remove it with `selectivekit-nnunet uninstall-trainer` (or delete this file).
"""

try:
    from selectivekit.adapters.nnunet import *  # noqa: F403
except ModuleNotFoundError as error:  # selectivekit uninstalled: leave nnU-Net's other trainers working
    if not (error.name or "").startswith("selectivekit"):
        raise
'''


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module = _trainers()
    value = module.TRAINERS[name] if name in module.TRAINERS else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _trainers():
    try:
        from . import _nnunet_trainers
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("nnunetv2", "torch"):
            raise
        msg = (
            "selectivekit's nnU-Net trainers need nnU-Net v2 and PyTorch: `pip install nnunetv2` "
            f"(missing: {error.name})."
        )
        raise ImportError(msg) from error
    return _nnunet_trainers


def _nnunet_trainer_folder() -> Path:
    """nnU-Net's ``nnunetv2/training/nnUNetTrainer`` folder, found without importing nnU-Net."""
    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        msg = "nnU-Net v2 is not installed in this environment (`pip install nnunetv2`)."
        raise ImportError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "training" / "nnUNetTrainer"


def shim_path() -> Path:
    """Where `install_trainer` writes: ``nnunetv2/training/nnUNetTrainer/selectivekit_trainers.py``.

    Returns
    -------
    Path
        The path in the nnU-Net installation of the running interpreter (the file need not exist).

    Raises
    ------
    ImportError
        If nnU-Net v2 is not installed.
    """
    return _nnunet_trainer_folder() / SHIM_NAME


def install_trainer(*, check: bool = True) -> Path:
    """Write the module that makes ``nnUNetv2_train -tr nnUNetTrainerUncertaintyAware`` find the trainers.

    nnU-Net finds a trainer by importing the modules of its package ``nnunetv2.training.nnUNetTrainer``
    and taking the first one with a class of that name; this writes a module there that imports the
    trainers of `selectivekit.adapters.nnunet`. Run it again after reinstalling nnU-Net.

    Parameters
    ----------
    check : bool, default True
        Then look every trainer up the way ``nnUNetv2_train`` does (imports nnU-Net and torch), and raise
        ``RuntimeError`` if one is not found.

    Returns
    -------
    Path
        The file written (see `shim_path`).
    """
    path = shim_path()
    try:
        path.write_text(_SHIM, encoding="utf-8")
    except OSError as error:
        msg = f"Cannot write {path} ({error.strerror}): install into an environment you can write to."
        raise PermissionError(msg) from error
    if check:
        _check_found()
    return path


def uninstall_trainer() -> Path | None:
    """Remove the module that `install_trainer` wrote; returns its path (``None`` if there was none)."""
    path = shim_path()
    if not path.exists():
        return None
    path.unlink()
    return path


def _check_found() -> None:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer")
    for name in TRAINER_NAMES:
        found = recursive_find_python_class(folder, name, "nnunetv2.training.nnUNetTrainer")
        if found is None or found is not _trainers().TRAINERS[name]:
            msg = f"nnU-Net does not find `{name}` in {folder} after writing {SHIM_NAME}."
            raise RuntimeError(msg)


def main(argv: list[str] | None = None) -> int:
    """``selectivekit-nnunet {path,install-trainer,uninstall-trainer,list}``."""
    parser = argparse.ArgumentParser(
        prog="selectivekit-nnunet",
        description="Make nnU-Net v2 (nnUNetv2_train -tr ...) find selectivekit's uncertainty trainers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path", help="print where install-trainer writes its module (nothing is written)")
    install = sub.add_parser("install-trainer", help="write the module into nnU-Net's trainer folder")
    install.add_argument(
        "--no-check", action="store_true", help="do not look the trainers up as nnUNetv2_train does"
    )
    sub.add_parser("uninstall-trainer", help="remove that module")
    sub.add_parser("list", help="print the trainer names that -tr accepts")
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            print(shim_path())
        elif args.command == "install-trainer":
            print(install_trainer(check=not args.no_check))
        elif args.command == "uninstall-trainer":
            removed = uninstall_trainer()
            print(removed if removed is not None else f"nothing to remove at {shim_path()}")
        else:
            print("\n".join(TRAINER_NAMES))
    except (ImportError, PermissionError, RuntimeError) as error:
        print(f"selectivekit-nnunet: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
