"""Decompression bombs: a file's declared size is checked before it is decoded.

Each file here is small on disk and declares far more values than the budget (`--max-voxels`): a multi-page
TIFF, a PNG of 90 million pixels (over Pillow's own warning limit), a BMP header with almost no data, a
NIfTI of zeros, a ``.npz`` of zeros, a ``.npy`` header alone, and a NIfTI header that declares 4 billion
voxels (refused by the default budget). ``selectivekit evaluate`` runs in a subprocess that reports its
peak resident memory: it must refuse the file with one line that names it and the flag, while its memory
grows by much less than the decoded size.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
SMALL = 10**6  # the budget of the crafted files below (each declares at least 64 MiB of values)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="peak memory from /proc/self (Linux)")


def _tiff_pages(path: Path) -> int:
    pages = [Image.new("L", (2048, 2048)) for _ in range(32)]
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_deflate")
    return 32 * 2048 * 2048


def _png(path: Path) -> int:
    Image.new("L", (9500, 9500)).save(path)  # more than Pillow's DecompressionBombWarning limit
    return 9500 * 9500


def _bmp(path: Path) -> int:
    width = height = 8192  # 8-bit, the pixel data cut off after a few bytes
    palette = b"".join(struct.pack("<4B", i, i, i, 0) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, width * height, 2835, 2835, 256, 0)
    path.write_bytes(
        b"BM" + struct.pack("<IHHI", offset + width * height, 0, 0, offset) + info + palette + b"\0" * 64
    )
    return width * height


def _nifti(path: Path) -> int:
    nibabel.save(nibabel.Nifti1Image(np.zeros((512, 512, 256), dtype=np.uint8), np.eye(4)), path)
    return 512 * 512 * 256


def _npz(path: Path) -> int:
    np.savez_compressed(path, unc=np.zeros((8192, 8192), dtype=np.uint8))
    return 8192 * 8192


def _npy_header(path: Path) -> int:
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (4096,) * 3}
        )
    return 4096**3


def _nifti_header(path: Path) -> int:
    """A header that declares 2048 x 2048 x 1024 uint8 voxels (4 GiB) followed by 16 bytes: refused by the
    default budget of 2**31 values."""
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((2048, 2048, 1024))
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + b"\0" * 16)
    return 2048 * 2048 * 1024


# (writer, file name, budget; None: the default)
BOMBS = [
    (_tiff_pages, "case_0_unc.tif", SMALL),
    (_png, "case_0_unc.png", SMALL),
    (_bmp, "case_0_unc.bmp", SMALL),
    (_nifti, "case_0_unc.nii.gz", SMALL),
    (_npz, "case_0_unc.npz", SMALL),
    (_npy_header, "case_0_unc.npy", SMALL),
    (_nifti_header, "case_0_unc.nii.gz", None),
]

_MEASURE = """
import json, sys
from selectivekit.cli import main
import nibabel, PIL.Image, tqdm, selectivekit.streaming  # loaded before the baseline


def status(key):  # KiB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to the current resident size
    handle.write("5")
before = status("VmRSS:")
code = main(sys.argv[1:])
print(json.dumps({"code": code, "growth_kib": status("VmHWM:") - before}))
"""


@pytest.mark.parametrize(("write", "name", "budget"), BOMBS, ids=[b[0].__name__.strip("_") for b in BOMBS])
def test_a_bomb_is_refused_from_its_header_with_little_memory(tmp_path, write, name, budget):
    folders = {role: tmp_path / role for role in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir()
    np.save(folders["pred"] / "case_0_pred.npy", np.zeros(4, dtype=np.uint8))
    np.save(folders["label"] / "case_0.npy", np.zeros(4, dtype=np.uint8))
    declared = write(folders["unc"] / name)
    assert (folders["unc"] / name).stat().st_size < MiB  # small on disk
    argv = [
        "evaluate", "--pred", str(folders["pred"]), "--label", str(folders["label"]),
        "--uncertainty", str(folders["unc"]), "--num-classes", "2", "--quiet", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    if budget is not None:
        argv += ["--max-voxels", str(budget)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    result = json.loads(run.stdout)
    assert result["code"] == 1, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr  # no warning of Pillow or NumPy before it
    assert run.stderr.startswith(f"selectivekit evaluate: error: file {name!r} declares {declared:,} values")
    assert "`--max-voxels`" in run.stderr
    growth = result["growth_kib"] * 1024
    assert growth < 32 * MiB < declared  # the decoded file would need at least `declared` bytes
    assert not (tmp_path / "out").exists()


def test_files_within_the_budget_are_read(tmp_path):
    from selectivekit.io import read_image

    path = tmp_path / "pages.tif"
    pages = [Image.new("L", (8, 6), color=i) for i in range(5)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(
        read_image(path, max_voxels=240), np.arange(5)[:, None, None] * np.ones((5, 6, 8))
    )
    with pytest.raises(ValueError, match=r"declares 240 values \(5 pages\), more than `max_voxels` 239"):
        read_image(path, max_voxels=239)
    archive = tmp_path / "two.npz"
    np.savez(archive, probs=np.zeros((3, 4)), other=np.zeros((100, 100)))
    assert read_image(archive, kind="probs", max_voxels=12).shape == (3, 4)  # only the array that is read
    with pytest.raises(ValueError, match="`max_voxels` must be an integer >= 1"):
        read_image(archive, max_voxels=0)
