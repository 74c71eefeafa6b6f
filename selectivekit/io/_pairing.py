"""Pairing the files of several folders into cases, and telling the folder layouts of the tools apart."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._names import (
    ARRAY_EXTENSIONS,
    EXTENSIONS,
    IMAGE_EXTENSIONS,
    MAX_LISTED,
    NNUNET_CHANNEL_SUFFIX,
    case_name,
    split_extension,
    strip_role_suffix,
)

NNUNET_MARKERS: tuple[tuple[str, ...], ...] = (
    ("predict_from_raw_data_args.json",),
    ("plans.json", "dataset.json"),
)
"""Files that mark a folder written by nnU-Net v2 (any one group, all of its files)."""
LAYOUTS: tuple[str, ...] = ("files", "nnunet", "monai")
"""The folder layouts [`folder_layout`][selectivekit.io.folder_layout] tells apart."""

# The suffixes that pick a role's file among several in one subfolder of MONAI's layout.
_ROLE_HINTS: dict[str, tuple[str, ...]] = {
    "pred": ("_pred", "_seg"),
    "label": ("_label", "_gt"),
    "uncertainty": ("_uncertainty", "_unc"),
    "probs": ("_probs", "_prob"),
}


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
    shown = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f", ... and {len(items) - MAX_LISTED} more"
    return shown


def _supported(folder: Path, extensions: tuple[str, ...] = EXTENSIONS) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.is_file()
        and (split := split_extension(p.name)) is not None
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


def _pick_one(
    paths: list[Path], prefer_arrays: bool, hints: tuple[str, ...], prefer_images: bool = False
) -> Path | None:
    """The file of a case: the only one, the one array file for an array role, the one image file for
    another role in an nnU-Net folder (``prefer_images``), or the one whose name ends with one of ``hints``
    (the role's suffixes); None if that leaves several."""
    if len(paths) == 1:
        return paths[0]
    if prefer_arrays or prefer_images:
        arrays = [p for p in paths if split_extension(p.name)[1] in ARRAY_EXTENSIONS]  # type: ignore[index]
        chosen = arrays if prefer_arrays else [p for p in paths if p not in arrays]
        if len(chosen) == 1:
            return chosen[0]
    hinted = [p for p in paths if split_extension(p.name)[0].lower().endswith(hints)]  # type: ignore[index]
    return hinted[0] if hints and len(hinted) == 1 else None


def _list_folder(
    role: str,
    folder: Path,
    extensions: tuple[str, ...],
    shared_with: Sequence[str] = (),
    *,
    layout: str = "files",
    prefer_arrays: bool = False,
    prefer_images: bool = False,
) -> dict[str, Path]:
    if layout == "monai":  # one subfolder per case, named after the case
        entries = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries += [(p, strip_role_suffix(sub.name)) for p in _supported(sub, extensions)]
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
        hints = _ROLE_HINTS.get(role, ()) if layout == "monai" else ()
        chosen = _pick_one(paths, prefer_arrays, hints, prefer_images)
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
        contributes the array file of a case that has both. An nnU-Net folder
        ([`folder_layout`][selectivekit.io.folder_layout] ``"nnunet"``) given for another name alone
        contributes the image file of a case that has both (the segmentation, e.g. ``--pred`` beside
        per-region uncertainty maps of ``evaluate --regions``).
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
            role,
            folder,
            extensions,
            others,
            layout=layouts[role],
            prefer_arrays=role in array_roles,
            # nnU-Net writes case.nii.gz (the segmentation) beside case.npz: for another role, the image
            prefer_images=layouts[role] == "nnunet" and role not in array_roles,
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
