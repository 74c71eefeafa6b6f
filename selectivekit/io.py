"""Reading segmentation outputs from files, and pairing them by case across folders.

The command line (``selectivekit evaluate``) is built on these functions; they are public so that a script
can reuse the same pairing and checks. Their messages name parameters (``label_map``, ``channel_axis``) and
role keys (``pred``, ``label``, ``uncertainty``, ``probs``: the keys of `Case.files`); the command line
translates them to its flags.

Formats
-------
``.nii`` / ``.nii.gz`` (nibabel), ``.npy`` / ``.npz`` (NumPy, no pickles), ``.png`` / ``.bmp`` /
``.tif`` / ``.tiff`` (Pillow; a multi-page TIFF is read as a stack of shape (n_pages, H, W)). Other files in
a folder (``plans.json``, nnU-Net's ``.pkl``, hidden files) are ignored.

Pairing rule
------------
Every file gets a *case name*:

1. the format extension is removed (``case_7_pred.nii.gz`` -> ``case_7_pred``);
2. one role suffix is removed if the name ends with it, compared case-insensitively, longest first:
   ``_uncertainty``, ``_probs``, ``_label``, ``_prob``, ``_pred``, ``_unc``, ``_seg``, ``_gt``
   (``case_7_pred`` -> ``case_7``);
3. nnU-Net's channel suffix ``_0000`` is removed only when *every* file of that folder ends with it
   (the suffix is a property of a folder of network inputs, whereas a lone ``img_0000`` is a case name).

Files with the same case name in every folder form one case; cases are returned sorted by name. A file
without a partner in some folder is an error that lists every such file by name. Two files of one folder
with the same case name are an error, except in one situation: when one folder is given for both the
predictions and the probability maps (nnU-Net writes ``case.nii.gz`` and ``case.npz`` side by side), the
predictions are taken from the image files and the probabilities from the ``.npy``/``.npz`` files; and
when a folder given for the probability maps alone holds an image and an array file for one case (nnU-Net's
``case.nii.gz`` beside ``case.npz``), the array file is taken.

Folders as the tools write them
-------------------------------
[`folder_layout`][selectivekit.io.folder_layout] recognises two layouts besides plain folders of files:

- ``"nnunet"``: a folder written by ``nnUNetv2_predict`` (it holds ``predict_from_raw_data_args.json``, or
  ``plans.json`` and ``dataset.json``) or a fold's ``validation`` folder (``plans.json`` and
  ``dataset.json`` two levels up, beside ``fold_0``, ...). Its ``.npz`` probabilities are stored in
  nnU-Net's array order: classes first, then the spatial axes as nnU-Net's reader returned them, i.e.
  (c, z, y, x) for NIfTI, which nibabel reads as (x, y, z); a 2D image gets an extra axis of size 1,
  (c, 1, H, W). [`load_case`][selectivekit.io.load_case] undoes both by default.
- ``"monai"``: MONAI's ``SaveImage`` with ``separate_folder=True`` (its default): no file at the top, one
  subfolder per case named after the input file, holding ``<case>_<postfix>.<ext>`` (postfix ``trans`` by
  default). The case name is the subfolder's name (a role suffix and the folder-wide ``_0000`` removed as
  above). Probability maps written this way are NIfTI files with the classes on the last axis.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .uncertainty import max_softmax_uncertainty

__all__ = [
    "AFFINE_TOLERANCE",
    "ARRAY_EXTENSIONS",
    "DEFAULT_MAX_VOXELS",
    "EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "NNUNET_MARKERS",
    "ROLE_SUFFIXES",
    "Case",
    "case_name",
    "folder_layout",
    "load_case",
    "pair_files",
    "parse_label_map",
    "read_image",
]

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
NNUNET_MARKERS: tuple[tuple[str, ...], ...] = (
    ("predict_from_raw_data_args.json",),
    ("plans.json", "dataset.json"),
)
"""Files that mark a folder written by nnU-Net v2 (any one group, all of its files)."""
LAYOUTS: tuple[str, ...] = ("files", "nnunet", "monai")
"""The folder layouts [`folder_layout`][selectivekit.io.folder_layout] tells apart."""

# Keys tried, in order, in a multi-array .npz file for each kind of content.
_NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "probs": ("probabilities", "probs", "prob", "softmax"),
    "uncertainty": ("uncertainty", "unc"),
    "pred": ("pred", "prediction", "seg", "segmentation"),
    "label": ("label", "gt", "seg", "segmentation"),
}
# The suffixes that pick a role's file among several in one subfolder of MONAI's layout.
_ROLE_HINTS: dict[str, tuple[str, ...]] = {
    "pred": ("_pred", "_seg"),
    "label": ("_label", "_gt"),
    "uncertainty": ("_uncertainty", "_unc"),
    "probs": ("_probs", "_prob"),
}
DEFAULT_MAX_VOXELS = 2**31
"""The default budget of [`read_image`][selectivekit.io.read_image]: values one file may declare (voxels
times channels or pages), 2**31 (8 GiB as float32), checked in the header before anything is decoded."""
_MAX_LISTED = 20
_PROB_SUM_TOL = 1e-2
_LUT_LIMIT = 1 << 20


# --------------------------------------------------------------------------------------------------
# names and pairing


def _split_extension(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for ext in EXTENSIONS:  # ".nii.gz" is tried before ".nii"
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def _strip_role_suffix(stem: str) -> str:
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
    split = _split_extension(name)
    if split is None:
        msg = f"`filename` must end with one of {', '.join(EXTENSIONS)}, got {name!r}."
        raise ValueError(msg)
    return _strip_role_suffix(split[0])


@dataclass(frozen=True)
class Case:
    """One case: its name and the file that holds it in each folder.

    Attributes
    ----------
    name : str
        The case name shared by the files.
    files : dict of str to Path
        Role key (as given to [`pair_files`][selectivekit.io.pair_files], e.g. ``"pred"``) -> file.
    layouts : dict of str to str
        Role key -> the layout of its folder (one of `LAYOUTS`, see
        [`folder_layout`][selectivekit.io.folder_layout]); a role not listed is read as ``"files"``.
    """

    name: str
    files: Mapping[str, Path]
    layouts: Mapping[str, str] = field(default_factory=dict)


def _partial_hint(listings: Mapping[str, Mapping[str, Path]], partial_roles: Sequence[str]) -> str:
    """When the true labels hold every case and others lack some: how to evaluate the predicted ones."""
    labels = listings.get("label")
    if labels is None or "label" in partial_roles or len(listings) < 2:
        return ""
    others = [set(listing) for role, listing in listings.items() if role != "label"]
    if any(names != others[0] for names in others) or not others[0] < set(labels):
        return ""  # the other folders disagree among themselves: skipping labels would not help
    return (
        "; if the labels folder holds more cases than were predicted (a fold against the full labelsTr), "
        'pass `partial_roles=("label",)` to evaluate the predicted cases only'
    )


def _format_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... and {len(items) - _MAX_LISTED} more"
    return shown


def _supported(folder: Path, extensions: tuple[str, ...] = EXTENSIONS) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.is_file()
        and (split := _split_extension(p.name)) is not None
        and split[1] in extensions
    )


def _has_nnunet_markers(folder: Path) -> bool:
    return any(all((folder / name).is_file() for name in group) for group in NNUNET_MARKERS)


def folder_layout(folder: str | os.PathLike[str]) -> str:
    """Which tool's layout a folder of outputs has, from its marker files and structure.

    Parameters
    ----------
    folder : str or path
        An existing folder.

    Returns
    -------
    {"nnunet", "monai", "files"}
        ``"nnunet"``: the folder holds ``predict_from_raw_data_args.json`` (written by
        ``nnUNetv2_predict``) or both ``plans.json`` and ``dataset.json``, or it is a fold's
        ``validation`` folder (``fold_*/validation`` with ``plans.json`` and ``dataset.json`` beside the
        folds). ``"monai"``: no supported file at the top, and subfolders that each hold files named after
        the subfolder (MONAI's ``SaveImage`` with ``separate_folder=True``). ``"files"``: anything else.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "predict_from_raw_data_args.json").write_text("{}")
    ...     folder_layout(d)
    'nnunet'
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        msg = f"`folder` must be an existing folder, got {str(folder)!r}."
        raise NotADirectoryError(msg)
    if _has_nnunet_markers(folder):
        return "nnunet"
    resolved = folder.resolve()
    if resolved.name == "validation" and resolved.parent.name.startswith("fold_"):
        if _has_nnunet_markers(resolved.parent.parent):
            return "nnunet"
    if _supported(folder):
        return "files"
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    named = [
        sub for sub in subfolders if any(p.name.lower().startswith(sub.name.lower()) for p in _supported(sub))
    ]
    return "monai" if named else "files"


def _pick_one(paths: list[Path], prefer_arrays: bool, hints: tuple[str, ...]) -> Path | None:
    """The file of a case: the only one, the one array file for an array role, or the one whose name ends
    with one of ``hints`` (the role's suffixes); None if that leaves several."""
    if len(paths) == 1:
        return paths[0]
    if prefer_arrays:
        arrays = [p for p in paths if _split_extension(p.name)[1] in ARRAY_EXTENSIONS]  # type: ignore[index]
        if len(arrays) == 1:
            return arrays[0]
    hinted = [p for p in paths if _split_extension(p.name)[0].lower().endswith(hints)]  # type: ignore[index]
    return hinted[0] if hints and len(hinted) == 1 else None


def _list_folder(
    role: str,
    folder: Path,
    extensions: tuple[str, ...],
    shared_with: Sequence[str] = (),
    *,
    layout: str = "files",
    prefer_arrays: bool = False,
) -> dict[str, Path]:
    if layout == "monai":  # one subfolder per case, named after the case
        entries = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries += [(p, _strip_role_suffix(sub.name)) for p in _supported(sub, extensions)]
    else:
        entries = [(p, case_name(p)) for p in _supported(folder, extensions)]
    if not entries:
        where = " or in its subfolders" if layout == "monai" else ""
        msg = f"`{role}` folder {str(folder)!r} has no file ending with {', '.join(extensions)}{where}."
        raise ValueError(msg)
    if all(n.endswith(NNUNET_CHANNEL_SUFFIX) and len(n) > 5 for _, n in entries):
        entries = [(p, n[: -len(NNUNET_CHANNEL_SUFFIX)]) for p, n in entries]
    grouped: dict[str, list[Path]] = {}
    for path, name in entries:
        grouped.setdefault(name, []).append(path)
    by_name: dict[str, Path] = {}
    for name, paths in grouped.items():
        # in MONAI's layout, one subfolder may hold a case's outputs for several roles (_seg, _prob, ...)
        chosen = _pick_one(paths, prefer_arrays, _ROLE_HINTS.get(role, ()) if layout == "monai" else ())
        if chosen is None:
            shown = " and ".join(
                str(p.relative_to(folder)) if layout == "monai" else p.name for p in paths[:2]
            )
            msg = f"`{role}` folder {str(folder)!r} has two files for case {name!r}: {shown}; "
            msg += "keep one per case."
            if shared_with:
                others = ", ".join(f"`{r}`" for r in shared_with)
                msg += f" The folder is also given for {others}: give each its own folder."
            raise ValueError(msg)
        by_name[name] = chosen
    return by_name


def pair_files(
    folders: Mapping[str, str | os.PathLike[str]],
    *,
    array_roles: Sequence[str] = (),
    partial_roles: Sequence[str] = (),
) -> list[Case]:
    """Pair the files of several folders by case name.

    Parameters
    ----------
    folders : mapping of str to path
        A role key for each folder (used in messages and as the key of `Case.files`, e.g.
        ``{"pred": "preds/", "label": "labels/", "uncertainty": "unc/"}``) -> the folder.
    array_roles : sequence of str, optional
        Names whose folder, when it is also given for another name, contributes only its
        ``.npy``/``.npz`` files (the other names then take only the image files). Used for nnU-Net
        output folders that hold ``case.nii.gz`` and ``case.npz`` side by side. Given alone, such a folder
        contributes the array file of a case that has both.
    partial_roles : sequence of str, optional
        Names whose folder may hold more cases than the others (e.g. ``("label",)`` to evaluate a fold's
        validation predictions against the full ``labelsTr``): their files without a partner are skipped.
        At least one name must not be partial.

    Returns
    -------
    list of Case
        Sorted by case name, with the layout of each folder
        ([`folder_layout`][selectivekit.io.folder_layout]) in `Case.layouts`.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        A folder is missing or is a file.
    ValueError
        A folder has no supported file, two files of one folder share a case name, or a file has no
        partner in another folder (every such file is listed by name; files of `partial_roles` are
        skipped instead).

    Notes
    -----
    The naming rule is described in the module docstring ([`selectivekit.io`][selectivekit.io]).
    """
    if not folders:
        msg = "`folders` must name at least one folder, got none."
        raise ValueError(msg)
    if all(role in partial_roles for role in folders):
        msg = (
            f"`partial_roles` must leave at least one of {', '.join(folders)} out, got {list(partial_roles)}."
        )
        raise ValueError(msg)
    resolved = {role: Path(folder).expanduser() for role, folder in folders.items()}
    for role, folder in resolved.items():
        if not folder.exists():
            msg = f"`{role}` folder {str(folder)!r} does not exist."
            raise FileNotFoundError(msg)
        if not folder.is_dir():
            msg = f"`{role}` must be a folder, got the file {str(folder)!r}."
            raise NotADirectoryError(msg)
    shared: dict[Path, list[str]] = {}
    for role, folder in resolved.items():
        shared.setdefault(folder.resolve(), []).append(role)
    layouts = {role: folder_layout(folder) for role, folder in resolved.items()}
    listings: dict[str, dict[str, Path]] = {}
    for role, folder in resolved.items():
        extensions = EXTENSIONS
        roles_here = shared[folder.resolve()]
        if layouts[role] != "monai" and len(roles_here) > 1 and any(r in array_roles for r in roles_here):
            extensions = ARRAY_EXTENSIONS if role in array_roles else IMAGE_EXTENSIONS
        others = [r for r in shared[folder.resolve()] if r != role]
        listings[role] = _list_folder(
            role, folder, extensions, others, layout=layouts[role], prefer_arrays=role in array_roles
        )

    all_names = set().union(*(listing for role, listing in listings.items() if role not in partial_roles))
    problems, lacking = [], []
    for role, listing in listings.items():
        missing = sorted(name for name in all_names if name not in listing)
        if missing:
            lacking.append(f"the `{role}` folder {str(resolved[role])!r} lacks {_format_list(missing)}")
        if role in partial_roles:  # its files without a partner are skipped
            continue
        unmatched = sorted(
            str(listing[name].relative_to(resolved[role]))
            for name in listing
            if any(name not in other for other in listings.values())
        )
        if unmatched:
            problems.append(f"in `{role}`: {_format_list(unmatched)}")
    if problems or lacking:
        roles = ", ".join(f"`{r}`" for r in listings)
        msg = (
            f"every case needs one file in each of {roles}: {'; '.join(lacking)}; files without a partner "
            f"(after removing the extension and a role suffix such as _pred, _label, _unc): "
            f"{'; '.join(problems)}. Add the missing files or move the extra ones away"
            + _partial_hint(listings, partial_roles)
            + "."
        )
        raise ValueError(msg)
    return [
        Case(
            name=name,
            files={role: listings[role][name] for role in listings},
            layouts=dict(layouts),
        )
        for name in sorted(all_names)
    ]


# --------------------------------------------------------------------------------------------------
# reading


def _pil_to_array(image: Any) -> np.ndarray:
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image)


def _read_pillow(path: Path, max_voxels: int) -> np.ndarray:
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        # our own budget is checked below, before any page is decoded, and says so in one line
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            n_frames = getattr(image, "n_frames", 1)
            declared = 0
            for index in range(n_frames):  # seeking reads a page's header, not its pixels
                image.seek(index)
                declared += image.width * image.height * len(image.getbands())
            pages = f"{n_frames} pages" if n_frames > 1 else f"{image.width} x {image.height} pixels"
            _check_budget(path, declared, pages, max_voxels)
            frames = []
            for index in range(n_frames):
                image.seek(index)
                frames.append(_pil_to_array(image))
    if n_frames == 1:
        return frames[0]
    try:
        return np.stack(frames)
    except ValueError as exc:
        shapes = sorted({f.shape for f in frames})
        msg = f"file {path.name!r} has {n_frames} pages of different shapes {shapes}."
        raise ValueError(msg) from exc


def _check_budget(path: Path, declared: int, what: Any, max_voxels: int) -> None:
    """Refuse a file whose header declares more than ``max_voxels`` values (``what``: its shape)."""
    if declared > max_voxels:
        msg = (
            f"file {path.name!r} declares {declared:,} values ({what}), more than `max_voxels` "
            f"{max_voxels:,}; it was not read. Raise `max_voxels` if the file is genuine."
        )
        raise ValueError(msg)


def _npy_shape(handle: Any) -> tuple[int, ...]:
    """The shape in the header of a ``.npy`` stream (the data is not read)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    else:  # 2.0 and 3.0 share the layout (3.0 only allows UTF-8 field names)
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape)


def _npz_key(path: Path, keys: list[str], kind: str | None) -> str:
    """The array of a ``.npz`` that holds ``kind``."""
    if len(keys) == 1:
        return keys[0]
    for key in _NPZ_KEYS.get(kind or "", ()):
        if key in keys:
            return key
    wanted = ", ".join(_NPZ_KEYS.get(kind or "", ())) or "a single array"
    msg = (
        f"file {path.name!r} holds several arrays ({', '.join(keys)}); expected one array "
        f"or one named {wanted}."
    )
    raise ValueError(msg)


def _check_declared_size(path: Path, ext: str, kind: str | None, max_voxels: int) -> None:
    """Read the header of a NumPy file and refuse it when it declares more than ``max_voxels`` values
    (NIfTI files are checked in ``_read_nifti``, Pillow's formats page by page in ``_read_pillow``)."""
    if ext == ".npy":
        with open(path, "rb") as handle:
            shape = _npy_shape(handle)
    elif ext == ".npz":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            key = _npz_key(path, list(members), kind)
            with archive.open(members[key]) as handle:
                shape = _npy_shape(handle)
    else:
        return
    _check_budget(path, math.prod(int(n) for n in shape), f"shape {shape}", max_voxels)


def _read_npz(path: Path, kind: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data[_npz_key(path, list(data.files), kind)]


def _read_nifti(path: Path, max_voxels: int) -> np.ndarray:
    """A NIfTI file's array (scaling applied); a ``.nii.gz`` is read to the end of its gzip stream.

    The shape in the header is checked against ``max_voxels`` before any data is decompressed or read.
    nibabel stops reading where the data ends, before the gzip trailer, so a wrong CRC or length (a
    corrupted file) would go unnoticed; here the stream is decompressed once, by us, and read to its end,
    where Python's gzip checks both (``gzip.BadGzipFile``).
    """
    import nibabel

    def checked(image: Any) -> Any:
        shape = tuple(int(n) for n in image.shape)  # from the header: no data read yet
        _check_budget(path, math.prod(shape), f"shape {shape}", max_voxels)
        return image

    if not path.name.lower().endswith(".gz"):
        return np.asanyarray(checked(nibabel.load(path)).dataobj)
    import gzip

    with gzip.open(path, "rb") as stream:
        head = stream.read(4)
        stream.seek(0)
        size = int.from_bytes(head, "little") if len(head) == 4 else 0
        size = size if size in (348, 540) else int.from_bytes(head, "big")
        image_class = nibabel.Nifti2Image if size == 540 else nibabel.Nifti1Image
        holder = nibabel.FileHolder(fileobj=stream)
        image = checked(image_class.from_file_map({"header": holder, "image": holder}))
        array = np.asanyarray(image.dataobj)
        while stream.read(1 << 20):  # to the trailer: raises on a wrong CRC or length
            pass
    return array


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
    if not _is_nifti(ref_path):
        return
    try:
        want = _nifti_affine(ref_path)
        for role, path in files:
            if not _is_nifti(path):
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


def read_image(
    path: str | os.PathLike[str], *, kind: str | None = None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> np.ndarray:
    """Read one file into a NumPy array.

    Parameters
    ----------
    path : str or path
        A ``.nii``/``.nii.gz``, ``.npy``/``.npz``, ``.png``/``.bmp``/``.tif``/``.tiff`` file.
    kind : {"pred", "label", "uncertainty", "probs"}, optional
        What the file holds. Used to pick the array of a multi-array ``.npz`` (``probabilities``,
        ``probs``, ... for ``"probs"``; ``uncertainty``/``unc``; ``pred``/``seg``; ``label``/``gt``).
    max_voxels : int, default ``DEFAULT_MAX_VOXELS`` (2**31)
        The most values (voxels times channels or pages) the file may declare. The size is read from the
        header (NIfTI, ``.npy``, the array of a ``.npz``, every page of a TIFF, a PNG's or BMP's
        dimensions) before anything is decoded, so that a small compressed file that expands to gigabytes
        is refused without using that memory.

    Returns
    -------
    numpy.ndarray
        The stored array: NIfTI in nibabel's (x, y, z, ...) order with the scaling applied; an RGB(A)
        image as (H, W, 3 or 4); a palette image as its indices; a multi-page TIFF as (pages, H, W).

    Raises
    ------
    ValueError
        Unsupported extension, unreadable content, an ambiguous ``.npz``, or a file that declares more than
        ``max_voxels`` values.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = Path(folder) / "case_1.npy"
    >>> np.save(path, np.zeros((4, 5, 6), dtype=np.uint8))
    >>> read_image(path).shape
    (4, 5, 6)
    >>> read_image(path, max_voxels=100)
    Traceback (most recent call last):
    ...
    ValueError: file 'case_1.npy' declares 120 values (shape (4, 5, 6)), more than `max_voxels` 100; ...
    """
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, int) or max_voxels < 1:
        msg = f"`max_voxels` must be an integer >= 1, got {max_voxels!r}."
        raise ValueError(msg)
    path = Path(path)
    split = _split_extension(path.name)
    if split is None:
        msg = f"`path` must end with one of {', '.join(EXTENSIONS)}, got {path.name!r}."
        raise ValueError(msg)
    ext = split[1]
    try:
        _check_declared_size(path, ext, kind, max_voxels)
        if ext in (".nii", ".nii.gz"):
            return _read_nifti(path, max_voxels)
        if ext == ".npy":
            return np.load(path, allow_pickle=False)
        if ext == ".npz":
            return _read_npz(path, kind)
        return _read_pillow(path, max_voxels)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("file "):
            raise
        msg = f"cannot read {path.name!r} as {ext}: {exc}"
        raise ValueError(msg) from exc
    except Exception as exc:  # nibabel/Pillow raise their own error classes on corrupt files
        msg = f"cannot read {path.name!r} as {ext}: {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc


def _single_channel(array: np.ndarray, path: Path, ext: str, what: str) -> np.ndarray:
    """Grey RGB(A) images (R == G == B) as one channel; colour images are refused."""
    if ext in (".png", ".bmp", ".tif", ".tiff") and array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        msg = (
            f"{what} file {path.name!r} is a colour image {array.shape}; it must hold one value "
            "per pixel (greyscale or palette)."
        )
        raise ValueError(msg)
    return array


# --------------------------------------------------------------------------------------------------
# label maps and labels


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


def _check_label_map(mapping: Mapping[int, int], num_classes: int, name: str = "label_map") -> dict[int, int]:
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
        listed = ", ".join(map(str, outside[:_MAX_LISTED]))
        msg = (
            f"{what} file {path.name!r} holds values outside `{name}`: {listed}"
            f"{' ...' if len(outside) > _MAX_LISTED else ''} (the map has "
            f"{', '.join(map(str, sorted(mapping)))}){hint}."
        )
        raise ValueError(msg)
    return mapped


def _check_classes(array: np.ndarray, num_classes: int, path: Path, what: str) -> None:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        values = np.unique(array[(array < 0) | (array >= num_classes)])
        listed = ", ".join(str(int(v)) for v in values[:_MAX_LISTED])
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


def _read_labels(
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
    array = _single_channel(array, path, _split_extension(path.name)[1], what)  # type: ignore[index]
    if array.size == 0:
        msg = f"{what} file {path.name!r} is empty (shape {array.shape})."
        raise ValueError(msg)
    array = _integer_labels(array, path, what)
    if label_map is not None:
        array = _apply_label_map(array, label_map, path, what, name, hint)
    _check_classes(array, num_classes, path, what)
    return array


# --------------------------------------------------------------------------------------------------
# uncertainty


def _is_array_file(path: Path) -> bool:
    split = _split_extension(path.name)
    return split is not None and split[1] in ARRAY_EXTENSIONS


def _is_nifti(path: Path) -> bool:
    split = _split_extension(path.name)
    return split is not None and split[1] in (".nii", ".nii.gz")


def _nnunet_reverses_axes(probs_file: Path, label_file: Path) -> bool:
    """Whether an nnU-Net ``.npz``/``.npy`` file's spatial axes are reversed against the label file as read
    here: true for NIfTI labels (nnU-Net's readers give (z, y, x), nibabel (x, y, z)), false for 2D images
    and TIFF stacks (read in the same order by both)."""
    return _is_array_file(probs_file) and _is_nifti(label_file)


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


def _read_probs_uncertainty(
    path: Path,
    spatial: tuple[int, ...],
    other: Path,
    num_classes: int,
    channel_axis: int | None,
    reverse_axes: bool,
    what: str,
    layout: str = "files",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[np.ndarray, np.ndarray]:
    probs = read_image(path, kind="probs", max_voxels=max_voxels)
    _check_finite(probs, path, what)
    preferred = None
    if layout == "nnunet" and _is_array_file(path):
        preferred = 0  # nnU-Net stores the classes first
        if probs.ndim == len(spatial) + 2 and probs.shape[1] == 1:  # a 2D case: (c, 1, H, W)
            probs = probs[:, 0]
    elif layout == "monai" and not _is_array_file(path):
        preferred = -1  # MONAI's writers put the channels last
    stored_spatial = tuple(reversed(spatial)) if reverse_axes else spatial
    axis = _channel_axis(probs.shape, stored_spatial, num_classes, channel_axis, path, other, what, preferred)
    if reverse_axes:  # classes first, then the other axes in reverse order
        probs = np.moveaxis(probs, axis, 0)
        probs = probs.transpose(0, *range(probs.ndim - 1, 0, -1))
        axis = 0
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
    sums = probs.sum(axis=axis, dtype=np.float64)
    worst = float(np.max(np.abs(sums - 1.0)))
    # one tolerance for the file and for the uncertainty computed from it, so that this message (with the
    # file's name) is the only one: 1e-2 for probabilities rounded when stored, wider for float16 with many
    # classes (max(K, 10) * eps, what max_softmax_uncertainty allows by default)
    tolerance = max(_PROB_SUM_TOL, max(probs.shape[axis], 10) * float(np.finfo(probs.dtype).eps))
    if worst > tolerance:
        msg = (
            f"{what} file {path.name!r} must sum to 1 along the class axis {axis} within {tolerance:.2g}, "
            f"got sums in [{float(sums.min()):.6g}, {float(sums.max()):.6g}]; check `channel_axis`."
        )
        raise ValueError(msg)
    # the function sums in float32: its rounding on top, so that a file accepted here is accepted there
    rounding = max(probs.shape[axis], 10) * float(np.finfo(np.float32).eps)
    u = max_softmax_uncertainty(probs, axis=axis, tolerance=tolerance + rounding)
    return u, np.argmax(probs, axis=axis)


def load_case(
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
    probs: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    ignore_affine: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check one case: predicted labels, true labels and uncertainty.

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
    pred, label, uncertainty, probs : str or None
        Keys of ``case.files`` for each role; give exactly one of ``uncertainty`` and ``probs``.
        ``pred`` may be None with ``probs``: the prediction is then the arg-max class.
    max_voxels : int, default ``DEFAULT_MAX_VOXELS`` (2**31)
        The most values one file may declare in its header (see [`read_image`][selectivekit.io.read_image]).
    ignore_affine : bool, default False
        Skip the affine check: by default every NIfTI file of the case must have the voxel-to-world
        matrix (``affine``) of the NIfTI label file within ``AFFINE_TOLERANCE`` (1e-3, entry by entry), so
        that a prediction saved in another orientation (LAS against RAS) or with another voxel spacing is
        refused instead of being compared voxel by voxel.

    Returns
    -------
    pred, label : numpy.ndarray of integers
        Same shape.
    uncertainty : numpy.ndarray of floats (or integers from an integer uncertainty file)
        Same shape; from probabilities, ``1 - max_k p_k`` by
        [`selectivekit.max_softmax_uncertainty`][selectivekit.max_softmax_uncertainty]
        (the sum of the non-max classes, no cancellation).

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
        side: (name, None if mapping is None else _check_label_map(mapping, num_classes, name))
        for side, (name, mapping) in sides.items()
    }
    hint = ""
    if shared:
        hint = (
            "; if only one side stores these values, map that side alone with `label_map_labels` or "
            "`label_map_pred`"
        )
    label_path = case.files[label]
    true = _read_labels(
        label_path, f"`{label}`", "label", num_classes, maps["label"][1], maps["label"][0], hint, max_voxels
    )
    predicted = None
    if pred is not None:
        pred_path = case.files[pred]
        predicted = _read_labels(
            pred_path, f"`{pred}`", "pred", num_classes, maps["pred"][1], maps["pred"][0], hint, max_voxels
        )
        if predicted.shape != true.shape:
            msg = (
                f"shape mismatch in case {case.name!r}: `{pred}` file {pred_path.name!r} has "
                f"shape {predicted.shape}, `{label}` file {label_path.name!r} has {true.shape}."
            )
            raise ValueError(msg)
    if probs is not None:
        layout = case.layouts.get(probs, "files")
        reverse = reverse_axes
        if reverse is None:
            reverse = layout == "nnunet" and _nnunet_reverses_axes(case.files[probs], label_path)
        u, argmax = _read_probs_uncertainty(
            case.files[probs],
            true.shape,
            label_path,
            num_classes,
            channel_axis,
            reverse,
            f"`{probs}`",
            layout,
            max_voxels,
        )
        if predicted is None:
            predicted = argmax
    else:
        unc_path = case.files[uncertainty]  # type: ignore[index]
        u = read_image(unc_path, kind="uncertainty", max_voxels=max_voxels)
        u = _single_channel(u, unc_path, _split_extension(unc_path.name)[1], f"`{uncertainty}`")  # type: ignore[index]
        _check_finite(u, unc_path, f"`{uncertainty}`")
        if reverse_axes:  # None: an uncertainty map is never reversed on its own (nnU-Net writes none)
            u = u.transpose()
        if u.shape != true.shape:
            msg = (
                f"shape mismatch in case {case.name!r}: `{uncertainty}` file "
                f"{unc_path.name!r} has shape {u.shape}, `{label}` file {label_path.name!r} "
                f"has {true.shape}."
            )
            if tuple(reversed(u.shape)) == true.shape:
                msg += " (the axes look reversed: see `reverse_axes`)"
            raise ValueError(msg)
    if not ignore_affine:
        others = [(role, case.files[role]) for role in (pred, uncertainty, probs) if role is not None]
        _check_affines(case.name, others, (label, label_path))
    assert predicted is not None
    return predicted, true, u
