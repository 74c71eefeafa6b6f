"""Label maps (stored values to classes) and the reading of label files: integers, mapped, in [0, K)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._names import MAX_LISTED, split_extension
from ._readers import DEFAULT_MAX_VOXELS, read_image, single_channel

# label files spanning fewer values than this are mapped through a lookup table, larger spans by np.unique
_LUT_LIMIT = 1 << 20


def parse_label_map(text: str) -> dict[int, int]:
    """Parse ``"500:1,600:2,..."`` into ``{500: 1, 600: 2, ...}``.

    Parameters
    ----------
    text : str
        Comma-separated ``stored:class`` pairs of integers.

    Returns
    -------
    dict of int to int
        Stored value -> class index. A stored value ``0`` not mentioned maps to class 0 (background):
        see [`load_case`][selectivekit.io.load_case].

    Examples
    --------
    >>> parse_label_map("500:1, 600:2")
    {500: 1, 600: 2}
    """
    mapping: dict[int, int] = {}
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        msg = f"`label_map` must be comma-separated pairs like 500:1,600:2, got {text!r}."
        raise ValueError(msg)
    for entry in entries:
        match = re.fullmatch(r"([+-]?\d+)\s*:\s*([+-]?\d+)", entry)
        if match is None:
            msg = f"`label_map` entries must look like 500:1 (stored value:class), got {entry!r} in {text!r}."
            raise ValueError(msg)
        source, target = int(match.group(1)), int(match.group(2))
        if source in mapping:
            msg = f"`label_map` maps the value {source} twice, in {text!r}."
            raise ValueError(msg)
        mapping[source] = target
    return mapping


def check_label_map(mapping: Mapping[int, int], num_classes: int, name: str = "label_map") -> dict[int, int]:
    bad = sorted({t for t in mapping.values() if not 0 <= t < num_classes})
    if bad:
        msg = (
            f"`{name}` classes must be in [0, {num_classes}) for `num_classes` "
            f"{num_classes}, got {', '.join(map(str, bad))}."
        )
        raise ValueError(msg)
    full = dict(mapping)
    full.setdefault(0, 0)
    return full


def _integer_labels(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        msg = f"{what} file {path.name!r} must hold integer labels, got dtype {array.dtype}."
        raise TypeError(msg)
    finite = np.isfinite(array)
    if not finite.all() or not np.array_equal(array, np.round(array)):
        msg = (
            f"{what} file {path.name!r} must hold integer labels, got non-integer "
            f"{'or non-finite ' if not finite.all() else ''}values (dtype {array.dtype})."
        )
        raise ValueError(msg)
    low, high = float(array.min()), float(array.max())
    if low < -(2.0**63) or high >= 2.0**63:  # no int64 holds it: say so before a cast would wrap it
        value = high if high >= 2.0**63 else low
        msg = (
            f"{what} file {path.name!r} holds the label {value:g}, beyond any integer type; labels are "
            "class numbers (or values of `label_map`)."
        )
        raise ValueError(msg)
    return array.astype(np.int64)


def _apply_label_map(
    array: np.ndarray,
    mapping: Mapping[int, int],
    path: Path,
    what: str,
    name: str = "label_map",
    hint: str = "",
) -> np.ndarray:
    low, high = int(array.min()), int(array.max())
    if high - low < _LUT_LIMIT:  # a lookup table: one pass, no sort (label files hold few distinct values)
        lut = np.full(high - low + 1, -1, dtype=np.int32)
        for source, target in mapping.items():
            if low <= source <= high:
                lut[source - low] = target
        mapped = lut[np.subtract(array, low, dtype=np.int64 if array.itemsize > 4 else np.int32)]
        outside_mask = mapped < 0
        outside = [int(v) for v in np.unique(array[outside_mask])] if outside_mask.any() else []
    else:
        values, inverse = np.unique(array, return_inverse=True)
        outside = [int(v) for v in values if int(v) not in mapping]
        if not outside:
            targets = np.array([mapping[int(v)] for v in values], dtype=np.int32)
            mapped = targets[inverse].reshape(array.shape)
    if outside:
        listed = ", ".join(map(str, outside[:MAX_LISTED]))
        msg = (
            f"{what} file {path.name!r} holds values outside `{name}`: {listed}"
            f"{' ...' if len(outside) > MAX_LISTED else ''} (the map has "
            f"{', '.join(map(str, sorted(mapping)))}){hint}."
        )
        raise ValueError(msg)
    return mapped


def _check_classes(array: np.ndarray, num_classes: int, path: Path, what: str) -> None:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        values = np.unique(array[(array < 0) | (array >= num_classes)])
        listed = ", ".join(str(int(v)) for v in values[:MAX_LISTED])
        remap = (
            "pass `label_map` (e.g. 500:1,600:2) if the files store other values (`label_map_labels` or "
            "`label_map_pred` for one side only, e.g. label masks stored as 0/255 with predictions stored "
            "as 0/1)"
        )
        if low >= 0 and high < _LIKELY_CLASS_IDS:  # small whole numbers: most likely classes not counted
            fix = (
                f"if {high} is a class, pass `num_classes` {high + 1} (or more, if other files hold larger "
                f"classes: K counts the classes 0..K-1, background included); else {remap}"
            )
        else:
            fix = remap
        msg = (
            f"{what} file {path.name!r} holds labels outside [0, {num_classes}) for `num_classes` "
            f"{num_classes}: {listed} (the largest is {high}); {fix}."
        )
        raise ValueError(msg)


# labels up to this value read as class ids (the message suggests a larger `num_classes`); larger ones as
# stored codes such as 255 or 500 (it suggests `label_map`)
_LIKELY_CLASS_IDS = 64


def read_labels(
    path: Path,
    what: str,
    kind: str,
    num_classes: int,
    label_map: Mapping[int, int] | None,
    name: str = "label_map",
    hint: str = "",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> np.ndarray:
    array = read_image(path, kind=kind, max_voxels=max_voxels)
    array = single_channel(array, path, split_extension(path.name)[1], what)  # type: ignore[index]
    if array.size == 0:
        msg = f"{what} file {path.name!r} is empty (shape {array.shape})."
        raise ValueError(msg)
    array = _integer_labels(array, path, what)
    if label_map is not None:
        array = _apply_label_map(array, label_map, path, what, name, hint)
    _check_classes(array, num_classes, path, what)
    return array
