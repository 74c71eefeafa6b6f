"""Shard states of ``selectivekit evaluate --shard i/n --save-state FILE``, for ``selectivekit merge``.

A state file is a NumPy ``.npz`` archive written without pickle: a JSON header (format name, version, the
evaluation's settings and coverages, the shard, the case names and voxel counts, the accumulator's
configuration) stored as bytes, and the arrays of
[`SegmentationAccumulator.to_arrays`][selectivekit.SegmentationAccumulator.to_arrays]. It is read back with
``allow_pickle=False``, so a state file never runs code. [`read_states`][selectivekit.shards.read_states]
refuses files that are not such states, states of another version, and states whose settings, coverages or
accumulator configuration differ, and it requires every shard ``0..n-1`` exactly once; it merges them in
shard order, so that the merged report equals the report of one process over all cases, to the last bit
(see the sharding guide).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._lib import check_npz_sizes
from .streaming import SegmentationAccumulator

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "MergedStates",
    "ShardExtra",
    "is_state_file",
    "parse_shard",
    "read_states",
    "shard_slice",
    "write_state",
]

STATE_FORMAT = "selectivekit-evaluate-state"
"""The ``format`` of a state file's header."""
STATE_VERSION = 1
"""The version of the state files this selectivekit writes and reads."""

_HEADER = "header"
_PREFIX = "acc_"
_EXTRA_PREFIX = "extra_"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based shard ``i`` of ``n``) as ``(i, n)``.

    Examples
    --------
    >>> parse_shard("2/8")
    (2, 8)
    """
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        msg = f"`shard` must be I/N with integers 0 <= I < N (e.g. 0/4), got {text!r}."
        raise ValueError(msg) from None
    if count < 1 or not 0 <= index < count:
        msg = f"`shard` must be I/N with 0 <= I < N (shards are numbered from 0), got {text!r}."
        raise ValueError(msg)
    return index, count


def shard_slice(n_cases: int, shard: tuple[int, int]) -> slice:
    """The contiguous block of the ``n_cases`` (sorted) cases that shard ``(i, n)`` evaluates.

    Blocks differ in size by one at most and, taken in shard order, give every case once in its order.

    Examples
    --------
    >>> [shard_slice(10, (i, 3)) for i in range(3)]
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    index, count = shard
    base, extra = divmod(n_cases, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def write_state(
    path: Path,
    accumulator: SegmentationAccumulator,
    /,
    *,
    names: Sequence[str],
    voxels: Sequence[int],
    settings: dict[str, Any],
    requested: Sequence[float],
    shard: tuple[int, int],
    n_cases: int,
    extra: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None,
) -> None:
    """Write one shard's state to ``path`` (``.npz``); ``extra`` (a JSON-able header and named arrays) is
    stored beside the accumulator and given back by ``read_states`` (``MergedStates.extras``).

    The file is written in place: the command line writes it through
    [`selectivekit.report.atomic_file`][selectivekit.report.atomic_file], so that ``--save-state FILE``
    appears whole or not at all and a killed run leaves nothing behind that the next run does not remove.
    """
    from . import __version__

    acc_header, arrays = accumulator.to_arrays()
    header = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "selectivekit_version": __version__,
        "settings": settings,
        "requested": [float(c) for c in requested],
        "shard": list(shard),
        "n_cases": int(n_cases),
        "names": list(names),
        "voxels": [int(v) for v in voxels],
        "accumulator": acc_header,
        "extra": None if extra is None else extra[0],
    }
    payload = {_HEADER: np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)}
    payload |= {_PREFIX + name: np.ascontiguousarray(a) for name, a in arrays.items()}
    if extra is not None:
        payload |= {_EXTRA_PREFIX + name: np.ascontiguousarray(a) for name, a in extra[1].items()}
    with open(path, "wb") as handle:
        np.savez(handle, **payload)


def is_state_file(path: Path, /) -> bool:
    """Whether ``path`` is a state file of ``evaluate --save-state`` (of any version): a NumPy archive whose
    header names the state format. Reads the header only.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "notes.npz"
    ...     _ = path.write_text("my notes")
    ...     is_state_file(path)
    False
    """
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{_HEADER}.npy") as member:
            header = np.lib.format.read_array(member, allow_pickle=False)
        return json.loads(header.tobytes().decode("utf-8")).get("format") == STATE_FORMAT
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, AttributeError, RecursionError, EOFError):
        return False
    except MemoryError:  # a header that declares a huge array
        return False


@dataclass
class MergedStates:
    """What [`read_states`][selectivekit.shards.read_states] returns: everything a report needs."""

    accumulator: SegmentationAccumulator
    names: list[str]
    voxels: list[int]
    settings: dict[str, Any]
    requested: list[float]
    extras: list[ShardExtra] = field(default_factory=list)
    """Per shard in shard order, the extra state the writer added (``extra=`` of ``write_state``): the
    command line's voxel errors and calibration; empty when the shards have none."""


@dataclass(frozen=True)
class ShardExtra:
    """The extra state of one shard file, for its writer to read back."""

    path: Path
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    names: list[str]


def _read_one(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    not_ours = f"`states` file {str(path)!r} is not a selectivekit state file (from `evaluate --save-state`)"
    try:
        if path.is_file() and not zipfile.is_zipfile(path):
            msg = f"{not_ours}: it is not a NumPy .npz archive."
            raise ValueError(msg)
        check_npz_sizes(path, "states")  # before np.load reads any array
        with np.load(path, allow_pickle=False) as data:
            if _HEADER not in data.files:
                msg = f"{not_ours}: it has no header."
                raise ValueError(msg)
            header = json.loads(data[_HEADER].tobytes().decode("utf-8"))
            arrays = {name[len(_PREFIX) :]: data[name] for name in data.files if name.startswith(_PREFIX)}
            extras = {
                name[len(_EXTRA_PREFIX) :]: data[name]
                for name in data.files
                if name.startswith(_EXTRA_PREFIX)
            }
    except FileNotFoundError:
        msg = f"`states` file {str(path)!r} does not exist."
        raise ValueError(msg) from None
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        msg = f"{not_ours} ({type(exc).__name__})."
        raise ValueError(msg) from None
    except RecursionError:
        msg = f"{not_ours}: its header is nested too deeply."
        raise ValueError(msg) from None
    except ValueError as exc:
        if str(exc).startswith(f"`states` file {str(path)!r}"):  # ours already, naming the file
            raise
        msg = f"{not_ours} ({exc})."
        raise ValueError(msg) from None
    if not isinstance(header, dict) or header.get("format") != STATE_FORMAT:
        msg = f"{not_ours}: its header names another format."
        raise ValueError(msg)
    if header.get("version") != STATE_VERSION:
        msg = (
            f"`states` file {str(path)!r} has state version {header.get('version')!r}; this selectivekit "
            f"reads version {STATE_VERSION} (merge with the selectivekit that wrote it)."
        )
        raise ValueError(msg)
    _check_header(path, header)
    if header.get("extra") is not None and not isinstance(header["extra"], dict):
        raise _damaged(path, "`extra` must be an object")
    return header, arrays, extras


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(f"`states` file {str(path)!r} is damaged: {what}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """The fields of a state's header have the types and ranges ``write_state`` gives them."""
    shard, n_cases = header.get("shard"), header.get("n_cases")
    if not (
        isinstance(shard, list) and len(shard) == 2 and all(map(_is_int, shard)) and 0 <= shard[0] < shard[1]
    ):
        raise _damaged(path, f"`shard` must be [i, n] with 0 <= i < n, got {shard!r}")
    if not _is_int(n_cases) or n_cases < 0:
        raise _damaged(path, f"`n_cases` must be an integer >= 0, got {n_cases!r}")
    names, voxels = header.get("names"), header.get("voxels")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise _damaged(path, "`names` must be a list of case names")
    if len(set(names)) != len(names):
        raise _damaged(path, "`names` holds a case twice")
    expected = len(range(n_cases)[shard_slice(n_cases, (shard[0], shard[1]))])
    if len(names) != expected:
        raise _damaged(
            path,
            f"shard {shard[0]}/{shard[1]} of {n_cases} cases holds {expected} cases, got {len(names)} names",
        )
    if (
        not isinstance(voxels, list)
        or len(voxels) != len(names)
        or not all(_is_int(v) and v > 0 for v in voxels)
    ):
        raise _damaged(path, "`voxels` must hold one positive voxel count per name")
    requested = header.get("requested")
    if (
        not isinstance(requested, list)
        or not requested
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c <= 1 for c in requested)
    ):
        raise _damaged(path, f"`requested` must be a list of coverages in (0, 1], got {requested!r}")
    if not isinstance(header.get("settings"), dict) or not isinstance(header.get("accumulator"), dict):
        raise _damaged(path, "`settings` and `accumulator` must be objects")


def _check_accumulator(path: Path, header: dict[str, Any], acc: SegmentationAccumulator) -> None:
    """The accumulator holds the images the header names, with their voxel counts and classes."""
    settings = header["settings"]
    for key in ("num_classes", "include_background"):
        if key in settings and settings[key] != getattr(acc, key):
            raise _damaged(
                path, f"its settings say {key}={settings[key]!r}, its accumulator {getattr(acc, key)!r}"
            )
    # the images' sizes, exact path then grid path (the accumulator keeps one of the two lists)
    sizes = [int(im[0].size) for im in acc._raw] + [int(im["size"]) for im in acc._images]
    if len(sizes) != len(header["names"]):
        raise _damaged(path, f"it names {len(header['names'])} cases but holds {len(sizes)} images")
    if sizes != header["voxels"]:
        raise _damaged(path, "`voxels` differ from the voxel counts of its images")


def _comparable(header: dict[str, Any], key: str) -> Any:
    """The part of a header that every shard of one evaluation shares (a shard's path and size may differ)."""
    value = header.get(key)
    if key == "accumulator" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("path", "n_images")}
    if key == "extra" and isinstance(value, dict):  # what the writer keeps per shard may differ
        return {k: v for k, v in value.items() if k not in ("n_images", "errors")} | {"present": True}
    return value


def read_states(paths: Sequence[Path], /) -> MergedStates:
    """Read shard state files and merge them in shard order.

    Raises ``ValueError`` (naming ``states`` and the file) for a file that is not a state of this version,
    for states of different settings, coverages or accumulator configuration, and unless the files hold
    every shard ``0..n-1`` of one split exactly once.
    """
    if not paths:
        msg = "`states` is empty; give the state files of every shard."
        raise ValueError(msg)
    loaded = [(Path(p), *_read_one(Path(p))) for p in paths]
    first_path, first, _, _ = loaded[0]
    for key in ("settings", "requested", "accumulator", "n_cases", "extra"):
        for path, header, _, _ in loaded[1:]:
            mine, ref = _comparable(header, key), _comparable(first, key)
            if mine != ref:
                msg = (
                    f"`states` must come from one evaluation: {str(path)!r} and {str(first_path)!r} "
                    f"differ in their {key} ({mine!r} against {ref!r})."
                )
                raise ValueError(msg)
    counts = {header["shard"][1] for _, header, _, _ in loaded}
    if len(counts) != 1:
        msg = f"`states` must come from one split into N shards, got N in {sorted(counts)}."
        raise ValueError(msg)
    (count,) = counts
    by_index: dict[int, Path] = {}
    for path, header, _, _ in loaded:
        index = header["shard"][0]
        if index in by_index:
            msg = f"`states` holds shard {index}/{count} twice: {str(by_index[index])!r} and {str(path)!r}."
            raise ValueError(msg)
        by_index[index] = path
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        msg = f"`states` misses shard(s) {', '.join(f'{i}/{count}' for i in missing)}; every shard is needed."
        raise ValueError(msg)
    loaded.sort(key=lambda item: item[1]["shard"][0])
    merged: SegmentationAccumulator | None = None
    names: list[str] = []
    voxels: list[int] = []
    holder: dict[str, Path] = {}  # the file of each case name
    for path, header, arrays, _ in loaded:
        try:
            acc = SegmentationAccumulator.from_arrays(header["accumulator"], arrays)
        except ValueError as exc:
            msg = f"`states` file {str(path)!r} is damaged: {exc}"
            raise ValueError(msg) from None
        _check_accumulator(path, header, acc)
        for name in header["names"]:
            if name in holder:
                msg = f"`states` files {str(holder[name])!r} and {str(path)!r} both hold case {name!r}."
                raise ValueError(msg)
            holder[name] = path
        merged = acc if merged is None else merged.merge(acc)
        names += header["names"]
        voxels += header["voxels"]
    assert merged is not None
    if merged.n_images == 0:
        msg = "`states` hold no image; evaluate at least one case."
        raise ValueError(msg)
    extras = [
        ShardExtra(path, header["extra"], extra_arrays, list(header["names"]))
        for path, header, _, extra_arrays in loaded
        if header.get("extra") is not None
    ]
    return MergedStates(merged, names, voxels, first["settings"], first["requested"], extras)
