"""GlaS (MICCAI 2015 Gland Segmentation) reader for the challenge's own flat-folder layout.

Layout, as distributed::

    DIR/train_1.bmp, DIR/train_1_anno.bmp, ..., DIR/testA_1.bmp, ..., DIR/testB_20_anno.bmp
    DIR/Grade.csv

Images are RGB BMPs of varying size; annotations are 8-bit BMPs with 0 for background and one integer id
per gland, so the binary mask is ``anno > 0``. ``Grade.csv`` has the header
``name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)``; values carry leading spaces and
some copies separate rows with a bare carriage return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from reference_models.data.errors import DataError

__all__ = ["SPLITS", "GlasImage", "load_glas", "read_annotation", "read_grade_csv", "read_rgb"]

SPLITS = ("train", "testA", "testB")
_NAME = re.compile(r"^(train|testA|testB)_(\d+)$")


@dataclass(frozen=True)
class GlasImage:
    """One GlaS image: ``image`` uint8 (H, W, 3), ``mask`` bool (H, W), ``grade`` from Grade.csv or None."""

    name: str
    split: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    grade: str | None


def read_grade_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Rows of ``Grade.csv`` keyed by image name, with whitespace stripped from names and values.

    Accepts LF, CRLF and CR-only line endings and an optional UTF-8 byte-order mark. The result maps
    ``name -> {"patient ID": ..., "grade (GlaS)": ..., "grade (Sirinukunwattana et al. 2015)": ...}``.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise DataError(msg) from exc
    lines = [line for line in text.splitlines() if line.strip()]  # splitlines knows \r, \n and \r\n
    if not lines:
        msg = f"{path} is empty; expected a header `name,patient ID, grade (GlaS), ...`."
        raise DataError(msg)
    header = [field.strip() for field in lines[0].split(",")]
    if not header or header[0] != "name":
        msg = f"{path}: first column of the header must be `name`, got {lines[0]!r}."
        raise DataError(msg)
    rows: dict[str, dict[str, str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(header):
            msg = f"{path}, row {number}: expected {len(header)} fields, got {len(fields)}: {line!r}."
            raise DataError(msg)
        rows[fields[0]] = dict(zip(header[1:], fields[1:], strict=True))
    return rows


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        msg = f"missing file {path}"
        raise DataError(msg)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (OSError, UnidentifiedImageError) as exc:
        msg = f"cannot read image {path}: {exc}"
        raise DataError(msg) from exc
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 array of shape (H, W, 3) (grayscale and palette images are converted)."""
    return np.asarray(_open(Path(path)).convert("RGB"), dtype=np.uint8)


def read_annotation(path: str | Path) -> np.ndarray:
    """A GlaS annotation as an integer instance map (H, W); 0 is background.

    8-bit grayscale and palette BMPs keep their raw indices (the instance ids). An RGB annotation (some
    re-saved copies) is reduced to its first channel.
    """
    image = _open(Path(path))
    if image.mode in ("L", "P", "I", "I;16"):
        return np.asarray(image).astype(np.int32)
    return np.asarray(image.convert("RGB"))[..., 0].astype(np.int32)


def _stems(directory: Path, split: str) -> list[str]:
    stems = []
    for path in directory.glob(f"{split}_*.bmp"):
        if _NAME.match(path.stem):
            stems.append(path.stem)
    return sorted(stems, key=lambda stem: int(stem.rsplit("_", 1)[1]))


def load_glas(directory: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[GlasImage]]:
    """Read a GlaS folder into ``{split: [GlasImage, ...]}`` ordered by image number.

    Raises
    ------
    DataError
        The folder holds no images of a requested split, an image lacks its ``_anno.bmp`` partner (or an
        annotation its image), a file cannot be decoded, or image and annotation differ in size. The message
        names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"GlaS folder {directory} does not exist."
        raise DataError(msg)
    for anno in directory.glob("*_anno.bmp"):
        partner = anno.with_name(anno.name.replace("_anno.bmp", ".bmp"))
        if _NAME.match(partner.stem) and not partner.is_file():
            msg = f"annotation {anno} has no image {partner.name} beside it."
            raise DataError(msg)
    grade_path = directory / "Grade.csv"
    grades = read_grade_csv(grade_path) if grade_path.is_file() else {}
    result: dict[str, list[GlasImage]] = {}
    for split in splits:
        if split not in SPLITS:
            msg = f"`splits` must be among {SPLITS}, got {split!r}."
            raise ValueError(msg)
        stems = _stems(directory, split)
        if not stems:
            msg = f"no {split}_N.bmp images in {directory}."
            raise DataError(msg)
        items = []
        for stem in stems:
            image_path = directory / f"{stem}.bmp"
            anno_path = directory / f"{stem}_anno.bmp"
            if not anno_path.is_file():
                msg = f"image {image_path} has no annotation {anno_path.name} beside it."
                raise DataError(msg)
            image = read_rgb(image_path)
            instances = read_annotation(anno_path)
            if image.shape[:2] != instances.shape:
                msg = (
                    f"shape mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but "
                    f"annotation {anno_path} is {instances.shape[1]}x{instances.shape[0]} (WxH)."
                )
                raise DataError(msg)
            grade = grades.get(stem, {}).get("grade (GlaS)")
            items.append(GlasImage(stem, split, image, instances > 0, instances, grade))
        result[split] = items
    return result
