"""Overlapping regions (BraTS' whole tumour, tumour core, enhancing tumour): named sets of labels, and label
maps turned into one binary structure per region.

A region is the set of voxels whose label is one of the region's labels; regions may overlap. The Dice
engine evaluates classes of one label map, so [`region_images`][selectivekit.io.region_images] lays the
regions of one image side by side along a new first axis: slice ``r`` holds ``r + 1`` where the voxel lies in
region ``r`` and 0 elsewhere. The regions are then the classes ``1..R`` of an image ``R`` times the size,
each evaluated as its own binary structure, and every function of the library takes them as they are
(``num_classes = R + 1``, background left out).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["parse_regions", "region_images"]

#: The largest label a region may list (label maps are read as 16-bit classes at most).
_MAX_LABEL = 2**16 - 1


def _labels_of(name: str, value: Any, where: str) -> tuple[int, ...]:
    """The labels of one region, sorted, each once: an integer or a list of integers, all >= 1."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    labels = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            msg = f"`regions`: region {name!r} must list integer labels{where}, got {v!r}."
            raise ValueError(msg)
        if v == 0:
            msg = (
                f"`regions`: region {name!r} lists label 0 (the background){where}; a region is a set of "
                "foreground labels."
            )
            raise ValueError(msg)
        if not 0 < v <= _MAX_LABEL:
            msg = f"`regions`: region {name!r} lists label {v}{where}; labels must be in [1, {_MAX_LABEL}]."
            raise ValueError(msg)
        labels.append(int(v))
    if not labels:
        msg = f"`regions`: region {name!r} lists no label{where}."
        raise ValueError(msg)
    return tuple(sorted(set(labels)))


def _checked(entries: Sequence[tuple[str, Any]], where: str) -> dict[str, tuple[int, ...]]:
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in entries:
        if not isinstance(name, str) or not name.strip():
            msg = f"`regions`: every region needs a name{where}, got {name!r}."
            raise ValueError(msg)
        name = name.strip()
        if name in regions:
            msg = f"`regions` names the region {name!r} twice{where}."
            raise ValueError(msg)
        regions[name] = _labels_of(name, value, where)
    if not regions:
        msg = f"`regions` must name at least one region{where}."
        raise ValueError(msg)
    return regions


def _from_text(text: str) -> dict[str, tuple[int, ...]]:
    entries = []
    for part in text.split(";"):
        if not part.strip():
            continue
        match = re.fullmatch(r"\s*([^=]+?)\s*=\s*([+-]?\d+(?:\s*,\s*[+-]?\d+)*)\s*,?\s*", part)
        if match is None:
            msg = (
                "`regions` must look like 'WT=1,2,3;TC=1,3;ET=3' (name=labels, regions separated by ';') "
                f"or be a JSON file, got {part.strip()!r} in {text!r}."
            )
            raise ValueError(msg)
        entries.append((match.group(1), [int(v) for v in match.group(2).split(",")]))
    return _checked(entries, "")


def _from_json(path: Path) -> dict[str, tuple[int, ...]]:
    where = f" in {path.name!r}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"`regions` file {str(path)!r} cannot be read as JSON: {exc}."
        raise ValueError(msg) from None
    if not isinstance(data, dict):
        msg = f"`regions` file {str(path)!r} must hold a JSON object, got {type(data).__name__}."
        raise ValueError(msg)
    if isinstance(data.get("labels"), dict):  # an nnU-Net dataset.json: its "labels", as nnU-Net reads them
        entries = [
            (name, value)
            for name, value in data["labels"].items()
            if name != "ignore" and not _is_background(value)
        ]
        return _checked(entries, where)
    return _from_mapping(data, where)


def _is_background(value: Any) -> bool:
    """nnU-Net's rule: the label 0, or a region whose only label is 0."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values) > 0 and all(not isinstance(v, bool) and v == 0 for v in values)


def _from_mapping(mapping: Mapping[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    entries = [
        (name, value)
        for name, value in mapping.items()
        if not (name == "background" and _is_background(value))
    ]
    return _checked(entries, where)


def parse_regions(spec: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Named overlapping regions, each a set of labels (``evaluate --regions``).

    Parameters
    ----------
    spec : str, path or mapping
        One of

        - text ``"WT=1,2,3;TC=1,3;ET=3"``: ``name=labels``, the regions separated by ``;``;
        - the path of a JSON file holding ``{"WT": [1, 2, 3], "TC": [1, 3], "ET": 3}``, or an nnU-Net
          ``dataset.json`` whose ``"labels"`` map region names to lists of labels (nnU-Net's region
          training, e.g. ``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
          "enhancing tumor": [3]}``): every entry but ``"background"`` (label 0) and ``"ignore"`` is a
          region, in the file's order, as nnU-Net's ``LabelManager`` reads them;
        - a mapping of names to a label or a list of labels (a ``"background"`` entry of 0 is skipped).

    Returns
    -------
    dict of str to tuple of int
        Region name -> its labels (sorted, each once), in the order given: the order of the regions in
        every report and of the maps in a per-region uncertainty file.

    Raises
    ------
    ValueError
        Text that is not ``name=labels;...``, a file that is not such JSON, a region without labels or with
        label 0 (the background), a label above 65535, a name given twice, no region.

    Examples
    --------
    >>> parse_regions("WT=1,2,3; TC=1,3; ET=3")
    {'WT': (1, 2, 3), 'TC': (1, 3), 'ET': (3,)}
    >>> parse_regions({"background": 0, "whole tumor": [1, 2, 3], "enhancing tumor": 3})
    {'whole tumor': (1, 2, 3), 'enhancing tumor': (3,)}
    """
    if isinstance(spec, Mapping):
        return _from_mapping(spec, "")
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and Path(spec).is_file()):
        path = Path(spec)
        if not path.is_file():
            msg = f"`regions` file {str(path)!r} does not exist."
            raise ValueError(msg)
        return _from_json(path)
    if not isinstance(spec, str):
        msg = f"`regions` must be text, a path or a mapping, got {type(spec).__name__}."
        raise TypeError(msg)
    if "=" not in spec:
        msg = (
            f"`regions` {spec!r} is neither a file nor regions like 'WT=1,2,3;TC=1,3;ET=3' (name=labels, "
            "regions separated by ';')."
        )
        raise ValueError(msg)
    return _from_text(spec)


def region_images(
    pred: np.ndarray,
    label: np.ndarray,
    uncertainty: np.ndarray,
    regions: Sequence[Sequence[int]] | Mapping[str, Sequence[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's label maps as one binary structure per region, side by side along a new first axis.

    Slice ``r`` of the prediction (of the truth) holds ``r + 1`` where the voxel's predicted (true) label is
    one of region ``r``'s labels, 0 elsewhere. Evaluated with ``num_classes = R + 1`` and the background left
    out, class ``r + 1`` is region ``r`` and its Dice the region's binary Dice; each image's Dice is the mean
    over its regions, and coverage counts (region, voxel) pairs, every voxel once per region.

    Parameters
    ----------
    pred, label : integer arrays of one shape S
        Label maps (labels >= 0), e.g. what nnU-Net writes after applying ``regions_class_order``.
    uncertainty : array of shape S or (R, *S)
        One map shared by every region (repeated for each), or one map per region, in the order of
        ``regions`` (region axis first).
    regions : sequence of label sequences, or a mapping of names to them
        The labels of each region ([`parse_regions`][selectivekit.io.parse_regions]); regions may overlap.

    Returns
    -------
    pred, label, uncertainty : arrays of shape (R, *S)
        ``uint8`` labels in ``{0, r + 1}`` along slice ``r`` (``uint16`` beyond 254 regions) and the
        uncertainty of each (region, voxel) pair.

    Examples
    --------
    >>> import numpy as np
    >>> from selectivekit import dice_at_coverage
    >>> label = np.array([[0, 1, 2, 3]])
    >>> pred = np.array([[0, 1, 3, 3]])
    >>> p, t, u = region_images(pred, label, np.zeros(label.shape), {"WT": (1, 2, 3), "ET": (3,)})
    >>> p[:, 0].tolist(), t[:, 0].tolist()
    ([[0, 1, 1, 1], [0, 0, 2, 2]], [[0, 1, 1, 1], [0, 0, 0, 2]])
    >>> result = dice_at_coverage(p[None], t[None], u[None], [1.0], num_classes=3)[0]
    >>> result.per_class_dice.round(3).tolist()  # WT, ET
    [[1.0, 0.667]]
    """
    groups = [
        tuple(int(v) for v in labels)
        for labels in (regions.values() if isinstance(regions, Mapping) else regions)
    ]
    if not groups:
        msg = "`regions` must hold at least one region."
        raise ValueError(msg)
    pred, label, uncertainty = np.asarray(pred), np.asarray(label), np.asarray(uncertainty)
    if pred.shape != label.shape:
        msg = f"`label` must have the shape of `pred` {pred.shape}, got {label.shape}."
        raise ValueError(msg)
    n = len(groups)
    if uncertainty.shape == pred.shape:
        u = np.ascontiguousarray(np.broadcast_to(uncertainty, (n, *pred.shape)))
    elif uncertainty.shape == (n, *pred.shape):
        u = uncertainty
    else:
        msg = (
            f"`uncertainty` must have the shape of `pred` {pred.shape} (one map for every region) or "
            f"{(n, *pred.shape)} (one map per region, {n} regions), got {uncertainty.shape}."
        )
        raise ValueError(msg)
    for name, array in (("pred", pred), ("label", label)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            msg = f"`{name}` must hold integer labels, got dtype {array.dtype}."
            raise TypeError(msg)
        if array.size and int(array.min()) < 0:
            msg = f"`{name}` must hold labels >= 0, got {int(array.min())}."
            raise ValueError(msg)
    if any(not labels or min(labels) < 1 for labels in groups):
        msg = "`regions` must list labels >= 1 for every region."
        raise ValueError(msg)
    top = max(
        max(max(labels) for labels in groups),
        *(int(a.max()) if a.size else 0 for a in (pred, label)),
    )
    dtype = np.uint8 if n < 255 else np.uint16
    table = np.zeros((n, top + 1), dtype=dtype)
    for r, labels in enumerate(groups):
        table[r, list(labels)] = r + 1
    return table[:, pred.astype(np.intp, copy=False)], table[:, label.astype(np.intp, copy=False)], u
