"""Readers of each format (NIfTI, NumPy, Pillow), with the size declared in a header checked before any
data is decoded."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._names import EXTENSIONS, split_extension


def _default_gzip_open() -> Any:
    """python-isal's ``igzip.open`` when it imports (ISA-L's inflate: the same gzip format and the same
    checks, a ``gzip.GzipFile`` subclass that raises ``gzip.BadGzipFile``), else the standard library's."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.open
    return igzip.open


# Opens a .nii.gz for reading, chosen at the first read (None until then, so that importing this module
# imports no decoder); the benchmarks and the tests set it to compare the two decoders.
_gzip_open: Any = None

DEFAULT_MAX_VOXELS = 2**31
"""The default budget of [`read_image`][selectivekit.io.read_image]: values one file may declare (voxels
times channels or pages), 2**31 (8 GiB as float32), checked in the header before anything is decoded."""

# Keys tried, in order, in a multi-array .npz file for each kind of content.
_NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "probs": ("probabilities", "probs", "prob", "softmax"),
    "uncertainty": ("uncertainty", "unc"),
    "pred": ("pred", "prediction", "seg", "segmentation"),
    "label": ("label", "gt", "seg", "segmentation"),
}


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
    where the gzip reader checks both (``gzip.BadGzipFile``). The reader is python-isal's ``igzip`` when it
    is installed (the ``fast`` extra: ISA-L's inflate in larger pieces, a third less time on a float32 map
    of 128^3), else Python's ``gzip``: the same array either way.
    """
    import nibabel

    def checked(image: Any) -> Any:
        shape = tuple(int(n) for n in image.shape)  # from the header: no data read yet
        _check_budget(path, math.prod(shape), f"shape {shape}", max_voxels)
        return image

    if not path.name.lower().endswith(".gz"):
        return np.asanyarray(checked(nibabel.load(path)).dataobj)
    global _gzip_open
    if _gzip_open is None:
        _gzip_open = _default_gzip_open()
    with _gzip_open(path, "rb") as stream:
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
    split = split_extension(path.name)
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


def single_channel(array: np.ndarray, path: Path, ext: str, what: str) -> np.ndarray:
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
