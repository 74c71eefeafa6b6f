"""Loading one case: its predicted labels, true labels and uncertainty, read and checked against each
other."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._lib import entropy, non_maximal_mass, probs_input
from ..predictive import UNCERTAINTY_MEASURES
from ._labels import check_label_map, read_labels
from ._names import is_array_file, is_nifti, split_extension
from ._pairing import Case
from ._readers import DEFAULT_MAX_VOXELS, read_image, single_channel
from ._regions import region_images

# how far the class sums of a probability file may stray from 1 (probabilities rounded when stored)
_PROB_SUM_TOL = 1e-2


AFFINE_TOLERANCE = 1e-3
"""Largest difference allowed between two NIfTI voxel-to-world matrices (``affine``), entry by entry.

In the file's spatial units (millimetres almost always): far above the float32 rounding of stored
coordinates, far below any real difference of orientation, voxel spacing or position.
"""


def _nifti_affine(path: Path) -> np.ndarray:
    import nibabel

    return np.asarray(nibabel.load(path).affine, dtype=np.float64)


def _affine_differences(got: np.ndarray, want: np.ndarray) -> str:
    """What differs between two voxel-to-world matrices, in words (each part beyond the tolerance)."""
    import nibabel

    parts = []
    axes_got, axes_want = "".join(nibabel.aff2axcodes(got)), "".join(nibabel.aff2axcodes(want))
    if axes_got != axes_want:
        parts.append(f"orientation ({axes_got} vs {axes_want})")
    spacing_got, spacing_want = (np.sqrt((a[:3, :3] ** 2).sum(axis=0)) for a in (got, want))
    if np.max(np.abs(spacing_got - spacing_want)) > AFFINE_TOLERANCE:
        shown = (", ".join(f"{v:.4g}" for v in sp) for sp in (spacing_got, spacing_want))
        parts.append("voxel spacing (({}) vs ({}))".format(*shown))
    elif axes_got == axes_want and np.max(np.abs(got[:3, :3] - want[:3, :3])) > AFFINE_TOLERANCE:
        parts.append("direction (a rotation or shear)")
    shift = float(np.max(np.abs(got[:3, 3] - want[:3, 3])))
    if shift > AFFINE_TOLERANCE:
        parts.append(f"position (by up to {shift:.4g})")
    return ", ".join(parts) or "their last row"


def _check_affines(case_name_: str, files: Sequence[tuple[str, Path]], reference: tuple[str, Path]) -> None:
    """Each NIfTI file of ``files`` has the voxel-to-world matrix of the NIfTI ``reference`` (the label),
    within ``AFFINE_TOLERANCE``; else a ``ValueError`` naming the case, both files and what differs."""
    ref_role, ref_path = reference
    if not is_nifti(ref_path):
        return
    try:
        want = _nifti_affine(ref_path)
        for role, path in files:
            if not is_nifti(path):
                continue
            got = _nifti_affine(path)
            if np.max(np.abs(got - want)) <= AFFINE_TOLERANCE:
                continue
            msg = (
                f"affine mismatch in case {case_name_!r}: `{role}` file {path.name!r} and `{ref_role}` file "
                f"{ref_path.name!r} differ in {_affine_differences(got, want)} (tolerance "
                f"{AFFINE_TOLERANCE:g}); resample one onto the other, or set `ignore_affine` if the voxel "
                "grids are known to match."
            )
            raise ValueError(msg)
    except ValueError:
        raise
    except Exception as exc:  # nibabel's own error classes on a header it cannot read
        msg = f"cannot read the affine of case {case_name_!r}: {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc


def _nnunet_reverses_axes(probs_file: Path, label_file: Path) -> bool:
    """Whether an nnU-Net ``.npz``/``.npy`` file's spatial axes are reversed against the label file as read
    here: true for NIfTI labels (nnU-Net's readers give (z, y, x), nibabel (x, y, z)), false for 2D images
    and TIFF stacks (read in the same order by both)."""
    return is_array_file(probs_file) and is_nifti(label_file)


def _check_finite(array: np.ndarray, path: Path, what: str) -> None:
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        msg = f"{what} file {path.name!r} must hold real numbers, got dtype {array.dtype}."
        raise TypeError(msg)
    if array.size == 0:
        msg = f"{what} file {path.name!r} is empty (shape {array.shape})."
        raise ValueError(msg)
    if np.issubdtype(array.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(np.count_nonzero(np.isinf(array)))
        if n_nan or n_inf:
            found = " and ".join(
                part
                for part in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "")
                if part
            )
            msg = f"{what} file {path.name!r} must be finite, got {found} value(s) of {array.size}."
            raise ValueError(msg)


def _channel_axis(
    shape: tuple[int, ...],
    spatial: tuple[int, ...],
    num_classes: int,
    channel_axis: int | None,
    path: Path,
    other: Path,
    what: str,
    preferred: int | None = None,
) -> int:
    ndim = len(shape)
    if ndim != len(spatial) + 1:
        msg = (
            f"{what} file {path.name!r} {shape} must have one more axis (the classes) than "
            f"{other.name!r} {spatial}."
        )
        raise ValueError(msg)
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            msg = (
                f"`channel_axis` must be in [{-ndim}, {ndim}) for {path.name!r} {shape}, got {channel_axis}."
            )
            raise ValueError(msg)
        axis = channel_axis % ndim
        rest = shape[:axis] + shape[axis + 1 :]
        if rest != spatial:
            msg = (
                f"{what} file {path.name!r} {shape} without axis {channel_axis} must have the "
                f"shape of {other.name!r} {spatial}, got {rest}."
            )
            raise ValueError(msg)
        return axis
    candidates = [a for a in range(ndim) if shape[a] == num_classes and shape[:a] + shape[a + 1 :] == spatial]
    if len(candidates) == 1:
        return candidates[0]
    if preferred is not None and preferred % ndim in candidates:  # the layout's class axis settles a tie
        return preferred % ndim
    if not candidates:
        msg = (
            f"{what} file {path.name!r} {shape} has no class axis of size `num_classes` "
            f"{num_classes} whose removal gives the shape of {other.name!r} {spatial}."
        )
        if any(shape[:a] + shape[a + 1 :] == tuple(reversed(spatial)) for a in range(ndim)):
            msg += (
                " The other axes look reversed (nnU-Net's .npz files are (c, z, y, x)): see `reverse_axes`."
            )
    else:
        msg = (
            f"{what} file {path.name!r} {shape}: axes {candidates} could all be the class "
            "axis; pass `channel_axis`."
        )
    raise ValueError(msg)


def _read_probs(
    path: Path,
    spatial: tuple[int, ...],
    other: Path,
    num_classes: int,
    channel_axis: int | None,
    reverse_axes: bool,
    what: str,
    layout: str = "files",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[np.ndarray, float]:
    """The checked probabilities of a file with the classes on axis 0, and the tolerance of their sums."""
    probs = read_image(path, kind="probs", max_voxels=max_voxels)
    _check_finite(probs, path, what)
    preferred = None
    if layout == "nnunet" and is_array_file(path):
        preferred = 0  # nnU-Net stores the classes first
        if probs.ndim == len(spatial) + 2 and probs.shape[1] == 1:  # a 2D case: (c, 1, H, W)
            probs = probs[:, 0]
    elif layout == "monai" and not is_array_file(path):
        preferred = -1  # MONAI's writers put the channels last
    stored_spatial = tuple(reversed(spatial)) if reverse_axes else spatial
    axis = _channel_axis(probs.shape, stored_spatial, num_classes, channel_axis, path, other, what, preferred)
    probs = np.moveaxis(probs, axis, 0)
    if reverse_axes:  # the other axes in reverse order
        probs = probs.transpose(0, *range(probs.ndim - 1, 0, -1))
    if not np.issubdtype(probs.dtype, np.floating):
        msg = f"{what} file {path.name!r} must hold floating-point probabilities, got dtype {probs.dtype}."
        raise TypeError(msg)
    low, high = float(probs.min()), float(probs.max())
    if low < 0 or high > 1:
        msg = (
            f"{what} file {path.name!r} must hold probabilities in [0, 1], got values in "
            f"[{low:.6g}, {high:.6g}]; pass `uncertainty` for other scores."
        )
        raise ValueError(msg)
    sums = probs.sum(axis=0, dtype=np.float64)
    worst = float(np.max(np.abs(sums - 1.0)))
    # one tolerance for the file and for the uncertainty computed from it, so that this message (with the
    # file's name) is the only one: 1e-2 for probabilities rounded when stored, wider for float16 with many
    # classes (max(K, 10) * eps, what max_softmax_uncertainty allows by default)
    tolerance = max(_PROB_SUM_TOL, max(probs.shape[0], 10) * float(np.finfo(probs.dtype).eps))
    if worst > tolerance:
        msg = (
            f"{what} file {path.name!r} must sum to 1 along the class axis {axis} within {tolerance:.2g}, "
            f"got sums in [{float(sums.min()):.6g}, {float(sums.max()):.6g}]; check `channel_axis`."
        )
        raise ValueError(msg)
    # the library sums in float32: its rounding on top, so that a file accepted here is accepted there
    return probs, tolerance + max(probs.shape[0], 10) * float(np.finfo(np.float32).eps)


def _uncertainty_of_samples(
    samples: Iterator[tuple[np.ndarray, float]],
    several: bool,
    measure: str,
    temperature: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The uncertainty map, the predicted class and the (mean) probabilities of one or ``several``
    probability maps (classes on axis 0), read one at a time.

    One map: ``msp`` and ``entropy`` straight from it. Several: a
    [`PredictiveAccumulator`][selectivekit.PredictiveAccumulator] over them (one map and the accumulator's
    state in memory at once), any measure of ``UNCERTAINTY_MEASURES``.
    """
    from ..predictive import PredictiveAccumulator
    from ..temperature import TemperatureScaling

    scaling = None if temperature is None else TemperatureScaling(tuple(temperature), math.nan, math.nan, 0)

    def scaled(probs: np.ndarray, tolerance: float) -> np.ndarray:
        return (
            probs if scaling is None else scaling.apply_to_probabilities(probs, axis=0, tolerance=tolerance)
        )

    if not several:
        if measure not in ("msp", "entropy"):
            msg = (
                f"`uncertainty_measure` {measure!r} needs several predictions of each case (several `probs` "
                "folders); one prediction gives `msp` or `entropy`."
            )
            raise ValueError(msg)
        probs, tolerance = next(samples)
        probs = scaled(probs, tolerance)
        checked, _, _ = probs_input(probs, 0, np, tolerance)
        u = non_maximal_mass(checked, 0, np) if measure == "msp" else entropy(checked, 0, np)
        return u, np.argmax(probs, axis=0), probs
    accumulator: PredictiveAccumulator | None = None
    for probs, tolerance in samples:  # one map in memory at a time, beside the accumulator's state
        if accumulator is None:
            accumulator = PredictiveAccumulator(axis=0, tolerance=tolerance)
        accumulator.update(scaled(probs, tolerance))
        del probs
    assert accumulator is not None
    u = np.asarray(accumulator.measure(measure))
    mean = np.asarray(accumulator.mean())
    del accumulator
    return u, np.argmax(mean, axis=0), mean


class CaseArrays(NamedTuple):
    """One case as [`read_case`][selectivekit.io.read_case] reads it."""

    pred: np.ndarray
    """Predicted class per voxel (from the ``pred`` file, else the arg-max of the mean probabilities)."""
    label: np.ndarray
    """True class per voxel."""
    uncertainty: np.ndarray
    """The uncertainty map, the shape of ``label``; higher means less confident."""
    probs: np.ndarray | None
    """The probabilities (the mean over the ``probs`` files, after the temperature), classes on axis 0; None
    when the case was read from an uncertainty file."""


def load_case(case: Case, **options: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check one case: ``(pred, label, uncertainty)`` of [`read_case`][selectivekit.io.read_case]
    (the same keyword arguments)."""
    arrays = read_case(case, **options)
    return arrays.pred, arrays.label, arrays.uncertainty


def read_case(
    case: Case,
    *,
    num_classes: int,
    label_map: Mapping[int, int] | None = None,
    label_map_labels: Mapping[int, int] | None = None,
    label_map_pred: Mapping[int, int] | None = None,
    channel_axis: int | None = None,
    reverse_axes: bool | None = None,
    pred: str | None = "pred",
    label: str = "label",
    uncertainty: str | None = "uncertainty",
    probs: str | Sequence[str] | None = None,
    uncertainty_measure: str = "msp",
    temperature: Sequence[float] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    ignore_affine: bool = False,
    regions: Sequence[Sequence[int]] | None = None,
) -> CaseArrays:
    """Read and check one case: predicted labels, true labels, uncertainty and (from probability files) the
    probabilities.

    Parameters
    ----------
    case : Case
        From [`pair_files`][selectivekit.io.pair_files].
    num_classes : int
        K; labels must lie in [0, K) (after ``label_map``).
    label_map : mapping of int to int, optional
        Stored value -> class, applied to predictions and labels (see
        [`parse_label_map`][selectivekit.io.parse_label_map]). The
        value 0 maps to class 0 unless the map says otherwise; any other value not in the map is an
        error.
    label_map_labels, label_map_pred : mapping of int to int, optional
        The same for one side only: the true labels, or the predictions (the other side is read as
        stored, unless it has its own map). For label masks stored as 0/255 and predictions stored as
        0/1: ``label_map_labels={255: 1}``. Give either ``label_map`` or these, not both.
    channel_axis : int, optional
        Class axis of the probability maps. By default the one axis of size ``num_classes`` whose
        removal leaves the label's shape (an error if there are several).
    reverse_axes : bool, optional
        Reverse the spatial axes of the uncertainty or probability maps before use (the class axis stays
        the class axis). nnU-Net's ``.npz`` probabilities are stored (c, z, y, x), SimpleITK's order,
        while nibabel reads the NIfTI predictions and labels as (x, y, z). By default (None) this is
        decided from the folder: true for the ``.npz``/``.npy`` files of an nnU-Net folder
        (``case.layouts``, see [`folder_layout`][selectivekit.io.folder_layout]) against NIfTI labels,
        false otherwise. In an nnU-Net folder the extra axis of size 1 of a 2D case, (c, 1, H, W), is
        dropped, and the class axis is taken to be the first when several axes could be it; in MONAI's
        layout, the last.
    pred, label, uncertainty : str or None
        Keys of ``case.files`` for each role; give exactly one of ``uncertainty`` and ``probs``.
        ``pred`` may be None with ``probs``: the prediction is then the arg-max class of the (mean)
        probabilities.
    probs : str or sequence of str, optional
        The key of a probability file, or the keys of several predictions of the case (the five folds of an
        nnU-Net ensemble, MC-dropout or test-time-augmentation samples), read one at a time and combined by
        a [`PredictiveAccumulator`][selectivekit.PredictiveAccumulator]: only one file's probabilities and
        the accumulator's state are in memory at once.
    uncertainty_measure : str, default "msp"
        How the uncertainty map is made from the probabilities: one of
        [`UNCERTAINTY_MEASURES`][selectivekit.UNCERTAINTY_MEASURES] (see
        [`PredictiveUncertainty.measure`][selectivekit.PredictiveUncertainty.measure]). One probability file
        gives ``"msp"`` (``1 - max p``) or ``"entropy"``; the others need several.
    temperature : sequence of one float, optional
        A temperature ``T`` applied to each probability file before anything else:
        ``softmax(log(p) / T)``, which equals ``softmax(z / T)`` of the logits ``z`` the file came from (see
        [`TemperatureScaling.apply_to_probabilities`][selectivekit.TemperatureScaling.apply_to_probabilities]).
        One temperature per class needs the logits themselves and is refused here.
    max_voxels : int, default ``DEFAULT_MAX_VOXELS`` (2**31)
        The most values one file may declare in its header (see [`read_image`][selectivekit.io.read_image]).
    ignore_affine : bool, default False
        Skip the affine check: by default every NIfTI file of the case must have the voxel-to-world
        matrix (``affine``) of the NIfTI label file within ``AFFINE_TOLERANCE`` (1e-3, entry by entry), so
        that a prediction saved in another orientation (LAS against RAS) or with another voxel spacing is
        refused instead of being compared voxel by voxel.
    regions : sequence of label sequences, optional
        Overlapping regions ([`parse_regions`][selectivekit.io.parse_regions]'s values, e.g. BraTS'
        ``((1, 2, 3), (1, 3), (3,))``): the case is returned as one binary structure per region by
        [`region_images`][selectivekit.io.region_images], arrays of shape (R, *S) whose class ``r + 1`` is
        region ``r``. The labels are read and checked against ``num_classes`` first. The uncertainty file
        holds one map shared by every region (the label's shape S) or one map per region: one more axis
        than the label, first or last, of length R, in the order of ``regions`` (e.g. (R, X, Y, Z) from
        NumPy, (X, Y, Z, R) from a 4D NIfTI; the first when both could be). Probability files are not
        read with ``regions``.

    Returns
    -------
    CaseArrays
        ``pred`` and ``label`` (integers, one shape); ``uncertainty`` of that shape (floats, or integers from
        an integer uncertainty file; from probabilities with ``"msp"``, ``1 - max_k p_k`` computed as the sum
        of the non-max classes, no cancellation, as
        [`selectivekit.max_softmax_uncertainty`][selectivekit.max_softmax_uncertainty] does); ``probs``, the
        (mean) probabilities with the classes on axis 0, or None.

    Raises
    ------
    ValueError, TypeError
        Shapes or NIfTI affines that differ (both files named), labels outside [0, K) or outside the map,
        non-finite uncertainty or probabilities, probabilities outside [0, 1] or not summing to 1.
    """
    if (uncertainty is None) == (probs is None):
        msg = "give exactly one of `uncertainty` and `probs`."
        raise ValueError(msg)
    if pred is None and probs is None:
        msg = "`pred` is required unless `probs` is given."
        raise ValueError(msg)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        msg = f"`num_classes` must be an integer >= 1, got {num_classes!r}."
        raise ValueError(msg)
    prob_roles = [probs] if isinstance(probs, str) else list(probs or [])
    if probs is not None and not prob_roles:
        msg = "`probs` must name at least one key of `case.files`, got none."
        raise ValueError(msg)
    if uncertainty_measure not in UNCERTAINTY_MEASURES:
        names = ", ".join(UNCERTAINTY_MEASURES)
        msg = f"`uncertainty_measure` must be one of {names}, got {uncertainty_measure!r}."
        raise ValueError(msg)
    if (uncertainty_measure != "msp" or temperature is not None) and probs is None:
        msg = "`uncertainty_measure` and `temperature` apply to `probs` files only."
        raise ValueError(msg)
    temperature = _one_temperature(temperature)
    if regions is not None:
        regions = tuple(tuple(int(v) for v in labels) for labels in regions)
        if not regions:
            msg = "`regions` must hold at least one region."
            raise ValueError(msg)
        if prob_roles:
            msg = (
                "`regions` takes `uncertainty` maps (one shared by every region, or one per region); "
                "probability files are not read with regions."
            )
            raise ValueError(msg)
    if label_map is not None and (label_map_labels is not None or label_map_pred is not None):
        msg = (
            "give either `label_map` (applied to predictions and labels) or `label_map_labels` / "
            "`label_map_pred` (one side each), not both."
        )
        raise ValueError(msg)
    if label_map_pred is not None and pred is None:
        msg = "`label_map_pred` applies to `pred` files; the predictions here come from `probs`."
        raise ValueError(msg)
    shared = label_map is not None
    sides = {
        "label": ("label_map", label_map) if shared else ("label_map_labels", label_map_labels),
        "pred": ("label_map", label_map) if shared else ("label_map_pred", label_map_pred),
    }
    maps = {
        side: (name, None if mapping is None else check_label_map(mapping, num_classes, name))
        for side, (name, mapping) in sides.items()
    }
    hint = ""
    if shared:
        hint = (
            "; if only one side stores these values, map that side alone with `label_map_labels` or "
            "`label_map_pred`"
        )
    label_path = case.files[label]
    true = read_labels(
        label_path, f"`{label}`", "label", num_classes, maps["label"][1], maps["label"][0], hint, max_voxels
    )
    predicted = None
    if pred is not None:
        pred_path = case.files[pred]
        predicted = read_labels(
            pred_path, f"`{pred}`", "pred", num_classes, maps["pred"][1], maps["pred"][0], hint, max_voxels
        )
        if predicted.shape != true.shape:
            msg = (
                f"shape mismatch in case {case.name!r}: `{pred}` file {pred_path.name!r} has "
                f"shape {predicted.shape}, `{label}` file {label_path.name!r} has {true.shape}."
            )
            raise ValueError(msg)
    probabilities = None
    if prob_roles:

        def samples() -> Iterator[tuple[np.ndarray, float]]:
            for role in prob_roles:
                layout = case.layouts.get(role, "files")
                reverse = reverse_axes
                if reverse is None:
                    reverse = layout == "nnunet" and _nnunet_reverses_axes(case.files[role], label_path)
                yield _read_probs(
                    case.files[role],
                    true.shape,
                    label_path,
                    num_classes,
                    channel_axis,
                    reverse,
                    f"`{role}`",
                    layout,
                    max_voxels,
                )

        u, argmax, probabilities = _uncertainty_of_samples(
            samples(), len(prob_roles) > 1, uncertainty_measure, temperature
        )
        if predicted is None:
            predicted = argmax
    else:
        unc_path = case.files[uncertainty]  # type: ignore[index]
        u = read_image(unc_path, kind="uncertainty", max_voxels=max_voxels)
        per_region = regions is not None and u.ndim == true.ndim + 1
        if not per_region:
            u = single_channel(u, unc_path, split_extension(unc_path.name)[1], f"`{uncertainty}`")  # type: ignore[index]
        _check_finite(u, unc_path, f"`{uncertainty}`")
        if per_region:
            assert regions is not None
            u = _region_maps(u, true.shape, len(regions), bool(reverse_axes), unc_path, f"`{uncertainty}`")
        elif reverse_axes:  # None: an uncertainty map is never reversed on its own (nnU-Net writes none)
            u = u.transpose()
        if u.shape[per_region:] != true.shape:
            msg = (
                f"shape mismatch in case {case.name!r}: `{uncertainty}` file "
                f"{unc_path.name!r} has shape {u.shape}, `{label}` file {label_path.name!r} "
                f"has {true.shape}."
            )
            if tuple(reversed(u.shape)) == true.shape:
                msg += " (the axes look reversed: see `reverse_axes`)"
            elif regions is None and u.ndim == true.ndim + 1:
                msg += " (one uncertainty map per region needs `regions`)"
            raise ValueError(msg)
    if not ignore_affine:
        others = [(role, case.files[role]) for role in (pred, uncertainty, *prob_roles) if role is not None]
        _check_affines(case.name, others, (label, label_path))
    assert predicted is not None
    if regions is not None:
        predicted, true, u = region_images(predicted, true, u, regions)
    return CaseArrays(predicted, true, u, probabilities)


def _region_maps(
    u: np.ndarray, spatial: tuple[int, ...], n_regions: int, reverse_axes: bool, path: Path, what: str
) -> np.ndarray:
    """A per-region uncertainty file's maps with the region axis first (the first or last axis of length
    ``n_regions`` whose removal leaves the label's shape), the spatial axes reversed with ``reverse_axes``."""
    stored = tuple(reversed(spatial)) if reverse_axes else spatial
    last = u.ndim - 1
    fits = [axis for axis in (0, last) if u.shape[:axis] + u.shape[axis + 1 :] == stored]
    matching = [axis for axis in fits if u.shape[axis] == n_regions]
    if not matching:
        found = (
            f" holds {u.shape[fits[0]]} maps along axis {fits[0]}"
            if fits
            else f" has no first or last axis whose removal leaves the label's shape {stored}"
        )
        msg = (
            f"{what} file {path.name!r} {u.shape}{found}, but `regions` lists {n_regions} regions: a "
            f"per-region uncertainty file needs a first or last axis of length {n_regions} (one map per "
            "region, in the order of `regions`) beside the label's shape."
        )
        raise ValueError(msg)
    u = np.moveaxis(u, matching[0], 0)
    if reverse_axes:
        u = u.transpose(0, *range(u.ndim - 1, 0, -1))
    return u


def _one_temperature(temperature: Sequence[float] | None) -> tuple[float] | None:
    """``temperature`` checked: None, or one finite positive number."""
    if temperature is None:
        return None
    values = tuple(temperature)
    if len(values) != 1:
        msg = (
            f"`temperature` must hold one temperature for probability files, got {len(values)}: a "
            "temperature per class changes probabilities in a way only the logits can undo (fit one "
            "temperature instead)."
        )
        raise ValueError(msg)
    value = values[0]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        msg = f"`temperature` must be a finite positive number, got {value!r}."
        raise ValueError(msg)
    return (float(value),)
