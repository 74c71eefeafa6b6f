"""File names: the supported extensions, the role suffixes and the case name of a file."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".png", ".bmp", ".tif", ".tiff")
"""Formats read as images (nibabel for NIfTI, Pillow for the others)."""
ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz")
"""Formats read with NumPy."""
EXTENSIONS: tuple[str, ...] = IMAGE_EXTENSIONS + ARRAY_EXTENSIONS
"""Every supported extension; other files in a folder are ignored."""
ROLE_SUFFIXES: tuple[str, ...] = (
    "_uncertainty",
    "_probs",
    "_label",
    "_trans",
    "_prob",
    "_pred",
    "_unc",
    "_seg",
    "_gt",
)
"""Suffixes removed from a file name (after the extension) to get its case name; longest first."""
NNUNET_CHANNEL_SUFFIX = "_0000"

# Names listed in one message at most (files without a partner, values outside a label map).
MAX_LISTED = 20


def split_extension(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of a file name with a supported extension (None otherwise)."""
    lower = name.lower()
    for ext in EXTENSIONS:  # ".nii.gz" is tried before ".nii"
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def strip_role_suffix(stem: str) -> str:
    """The stem without one role suffix (see `ROLE_SUFFIXES`)."""
    lower = stem.lower()
    for suffix in ROLE_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def case_name(filename: str | os.PathLike[str]) -> str:
    """The case name of one file: extension and one role suffix removed (see the module docstring).

    The folder-level ``_0000`` rule is applied by [`pair_files`][selectivekit.io.pair_files], not here.

    Parameters
    ----------
    filename : str or path
        A file name or path with a supported extension.

    Returns
    -------
    str

    Examples
    --------
    >>> case_name("heart_003_pred.nii.gz")
    'heart_003'
    >>> case_name("gland_12_Uncertainty.tif")
    'gland_12'
    """
    name = Path(filename).name
    split = split_extension(name)
    if split is None:
        msg = f"`filename` must end with one of {', '.join(EXTENSIONS)}, got {name!r}."
        raise ValueError(msg)
    return strip_role_suffix(split[0])


def is_array_file(path: Path) -> bool:
    """Whether a file is read with NumPy (``.npy``/``.npz``)."""
    split = split_extension(path.name)
    return split is not None and split[1] in ARRAY_EXTENSIONS


def is_nifti(path: Path) -> bool:
    """Whether a file is a NIfTI image (``.nii``/``.nii.gz``)."""
    split = split_extension(path.name)
    return split is not None and split[1] in (".nii", ".nii.gz")
