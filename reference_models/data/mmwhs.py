"""MM-WHS CT reader: NIfTI volumes, label map, resampling, HU normalisation and the in-order 5-fold split.

Files are ``ct_train_10XX_image.nii.gz`` with a partner ``ct_train_10XX_label.nii.gz``, anywhere under the
data folder (the official archive nests them in ``ct_train/``). Labels are mapped to 8 classes::

    500 -> 1 LV, 600 -> 2 RV, 420 and 421 -> 3 LA, 550 -> 4 RA, 205 -> 5 Myo, 820 -> 6 AO, 850 -> 7 PA

and every other value to 0 (background) with an :class:`UnknownLabelWarning` that gives the count.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference_models.data.errors import DataError, UnknownLabelWarning

__all__ = [
    "CLASS_NAMES",
    "HU_RANGE",
    "LABEL_MAP",
    "NUM_CLASSES",
    "Volume",
    "find_volumes",
    "folds_in_order",
    "load_mmwhs",
    "load_volume",
    "map_labels",
    "normalize_hu",
    "resample",
]

LABEL_MAP = {500: 1, 600: 2, 420: 3, 421: 3, 550: 4, 205: 5, 820: 6, 850: 7}
CLASS_NAMES = ("background", "LV", "RV", "LA", "RA", "Myo", "AO", "PA")
NUM_CLASSES = 8
#: HU window: air/lung below -300 and bone/metal above 900 carry no cardiac contrast; the clipped range is
#: mapped linearly to [-1, 1] with a fixed transform (no per-volume statistics, unlike the authors' z-score
#: per crop, so a voxel's input value does not depend on which crop it was seen in).
HU_RANGE = (-300.0, 900.0)
_IMAGE = re.compile(r"^(?P<stem>.+)_image\.nii(\.gz)?$")


@dataclass(frozen=True)
class Volume:
    """One CT volume after loading: ``image`` float32 normalised, ``label`` uint8 classes 0..7."""

    case: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    original_spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]


def map_labels(raw: np.ndarray, *, source: str = "label") -> np.ndarray:
    """Map MM-WHS label values to classes 0..7; unknown values warn (with a voxel count) and become 0."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        raw = np.rint(raw)
    raw = raw.astype(np.int64)
    out = np.zeros(raw.shape, dtype=np.uint8)
    known = np.zeros(raw.shape, dtype=bool)
    for value, cls in LABEL_MAP.items():
        hit = raw == value
        out[hit] = cls
        known |= hit
    unknown = ~known & (raw != 0)
    count = int(unknown.sum())
    if count:
        values = np.unique(raw[unknown])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
        msg = f"{source}: {count} voxels with unknown label values [{shown}] mapped to background (0)."
        warnings.warn(msg, UnknownLabelWarning, stacklevel=2)
    return out


def normalize_hu(hu: np.ndarray, hu_range: tuple[float, float] = HU_RANGE) -> np.ndarray:
    """Clip Hounsfield units to ``hu_range`` and map that range linearly onto [-1, 1] (float32)."""
    low, high = hu_range
    clipped = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    return ((clipped - (low + high) / 2) / ((high - low) / 2)).astype(np.float32)


def resample(
    image: np.ndarray, label: np.ndarray | None, spacing, target
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample to ``target`` spacing (mm): linear interpolation for the image, nearest for labels."""
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    target = np.asarray(target, dtype=float)
    shape = np.maximum(1, np.round(np.asarray(image.shape) * spacing / target)).astype(int)
    if tuple(shape) == image.shape:
        return image, label
    zoom = shape / np.asarray(image.shape)
    new_image = ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)
    new_label = None
    if label is not None:
        new_label = ndimage.zoom(label, zoom, order=0, mode="nearest", grid_mode=True)
    return new_image.astype(np.float32), new_label


def _read_nifti(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib errors)
        msg = f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}"
        raise DataError(msg) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        msg = f"{path}: expected a 3D volume, got shape {data.shape}."
        raise DataError(msg)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, zooms


def find_volumes(directory: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case, image_path, label_path)`` for every ``*_image.nii[.gz]`` under ``directory``, sorted.

    The label partner is looked for beside the image first, then anywhere under ``directory``.

    Raises
    ------
    DataError
        No volumes found, an image without its label, or a label without its image.
    """
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"MM-WHS folder {directory} does not exist."
        raise DataError(msg)
    images = {}
    for path in directory.rglob("*_image.nii*"):
        match = _IMAGE.match(path.name)
        if match:
            images[match["stem"]] = path
    labels = {}
    for path in directory.rglob("*_label.nii*"):
        stem = path.name.split("_label.nii")[0]
        labels.setdefault(stem, path)
    if not images:
        msg = f"no `*_image.nii.gz` volumes under {directory}."
        raise DataError(msg)
    for stem, path in labels.items():
        if stem not in images:
            msg = f"label {path} has no image `{stem}_image.nii.gz` under {directory}."
            raise DataError(msg)
    found = []
    for stem in sorted(images, key=_case_key):
        image = images[stem]
        suffix = ".nii.gz" if image.name.endswith(".gz") else ".nii"
        beside = image.with_name(f"{stem}_label{suffix}")
        label = beside if beside.is_file() else labels.get(stem)
        if label is None:
            msg = f"image {image} has no label `{stem}_label{suffix}` under {directory}."
            raise DataError(msg)
        found.append((stem, image, label))
    return found


def _case_key(stem: str):
    digits = re.findall(r"\d+", stem)
    return (int(digits[-1]) if digits else -1, stem)


def load_volume(case: str, image_path: Path, label_path: Path, target_spacing, hu_range=HU_RANGE) -> Volume:
    """Read one image/label pair, map labels, resample to ``target_spacing`` and normalise HU."""
    hu, spacing = _read_nifti(Path(image_path))
    raw, label_spacing = _read_nifti(Path(label_path))
    if hu.shape != raw.shape:
        msg = f"shape mismatch: image {image_path} is {hu.shape} but label {label_path} is {raw.shape}."
        raise DataError(msg)
    if not np.allclose(spacing, label_spacing, rtol=1e-3):
        msg = f"spacing mismatch: image {image_path} {spacing} vs label {label_path} {label_spacing}."
        raise DataError(msg)
    if min(spacing) <= 0:
        msg = f"{image_path}: voxel spacing must be positive, got {spacing} in the header."
        raise DataError(msg)
    label = map_labels(raw, source=str(label_path))
    image = normalize_hu(hu, hu_range)
    image, label = resample(image, label, spacing, target_spacing)
    return Volume(case, image, label, tuple(float(t) for t in target_spacing), spacing, tuple(hu.shape))


def load_mmwhs(directory: str | Path, target_spacing=(2.0, 2.0, 2.0)) -> list[Volume]:
    """Every volume under ``directory``, in case order, resampled to ``target_spacing`` (mm)."""
    return [load_volume(*entry, target_spacing) for entry in find_volumes(directory)]


def folds_in_order(n_volumes: int, per_fold: int = 4) -> list[list[int]]:
    """Held-out indices of the in-order cross-validation: ``[0..3], [4..7], ...`` (5 folds for 20 cases)."""
    if n_volumes < 2 * per_fold:
        msg = (
            f"in-order cross-validation with {per_fold} volumes per fold needs >= {2 * per_fold} "
            f"volumes, got {n_volumes}."
        )
        raise DataError(msg)
    return [list(range(start, min(start + per_fold, n_volumes))) for start in range(0, n_volumes, per_fold)]
