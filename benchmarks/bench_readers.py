"""Where the time of reading one gzipped NIfTI case goes, and what each reader choice buys.

Run: ``python benchmarks/bench_readers.py [--size 128] [--repeats 7]``.

Writes one case like ``bench_evaluate_peers.py``'s (a uint8 label map with smooth regions and a float32
uncertainty map of ``size^3``, gzipped NIfTI, nibabel's default compression level) to a temporary folder, then
times, file by file, medians of ``--repeats`` rounds that run every step once (the files are in the page
cache):

* the parts: reading the compressed bytes; decompressing them with Python's ``gzip`` (zlib) and with
  ``isal.igzip`` (ISA-L, python-isal; skipped when absent); parsing the NIfTI header and making the array
  from the decompressed bytes (nibabel); casting the array to float64 (what ``get_fdata`` adds) and
  copying the voxels into the other memory order (what a reorientation that moves voxels costs;
  reversing the axes of nibabel's Fortran-ordered array is a free view);
* whole reads: ``selectivekit.io.read_image`` with the standard library's gzip and with python-isal (the
  reader takes isal when it imports), ``nibabel.load(...).dataobj`` (nibabel's own opener: ``indexed_gzip``
  when installed, else gzip), ``get_fdata()``, and SimpleITK's ``ReadImage`` + ``GetArrayFromImage``.

Every whole read is checked to give the same array (values and dtype; SimpleITK's after the axis reversal).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import load_line


def interleaved_ms(rows: list[tuple[str, object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each ``(name, fn)``; every round runs each once, so that a change of the
    machine's load hits all alike."""
    for _, fn in rows:  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn in rows:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def write_case(folder: Path, size: int) -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_evaluate_peers import write_data

    write_data(folder, 1, size, 4)
    return {
        "label (uint8)": folder / "label" / "case_000.nii.gz",
        "uncertainty (float32)": folder / "unc" / "case_000.nii.gz",
    }


def main() -> None:
    import nibabel

    import selectivekit.io._readers as readers
    from selectivekit.io import read_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    try:
        from isal import igzip
    except ImportError:
        igzip = None
        print("python-isal: not installed, its rows skipped (pip install isal)")
    try:
        import SimpleITK as sitk
    except ImportError:
        sitk = None
        print("SimpleITK: not installed, its row skipped")
    try:
        import indexed_gzip  # noqa: F401

        nib_opener = "indexed_gzip"
    except ImportError:
        nib_opener = "gzip; indexed_gzip not installed"
    print(load_line())
    print(f"numpy {np.__version__}, nibabel {nibabel.__version__}; one case of {args.size}^3")
    print(f"medians of {args.repeats}")
    root = Path(tempfile.mkdtemp(prefix="bench_readers_", dir="/tmp"))
    rows: list[tuple[str, str, float]] = []
    try:
        for what, path in write_case(root, args.size).items():
            raw = path.read_bytes()
            plain = gzip.decompress(raw)
            reference = np.asanyarray(nibabel.load(path).dataobj)
            mib = reference.nbytes / 2**20
            print(f"\n{what}: {path.stat().st_size / 2**20:.2f} MiB gzipped, {mib:.1f} MiB decompressed")

            timed: list[tuple[str, object]] = []

            row = lambda name, fn, timed=timed: timed.append((name, fn))  # noqa: E731

            def parse_and_array(plain=plain):
                return np.asanyarray(nibabel.Nifti1Image.from_bytes(plain).dataobj)

            def via(opener, path=path):
                saved = readers._gzip_open
                readers._gzip_open = opener
                try:
                    return read_image(path)
                finally:
                    readers._gzip_open = saved

            for name, fn, want in [
                ("read_image, gzip (zlib)", lambda: via(gzip.open), reference),
                ("read_image, python-isal", (lambda: via(igzip.open)) if igzip else None, reference),
                (
                    f"nibabel.load(...).dataobj ({nib_opener})",
                    lambda path=path: np.asanyarray(nibabel.load(path).dataobj),
                    reference,
                ),
                (
                    "nibabel.load(...).get_fdata() (float64)",
                    lambda path=path: nibabel.load(path).get_fdata(),
                    reference.astype(np.float64),
                ),
                (
                    "SimpleITK ReadImage + GetArrayFromImage, axes reversed",
                    (lambda path=path: sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose())
                    if sitk
                    else None,
                    reference,
                ),
            ]:
                if fn is None:
                    continue
                got = fn()
                same = got.dtype == want.dtype and np.array_equal(got, want)
                if not same:
                    raise SystemExit(f"{name} gave another array ({got.dtype} vs {want.dtype})")
                row(name, fn)
            row("  read the compressed bytes", lambda path=path: path.read_bytes())
            row("  gzip.decompress (zlib)", lambda raw=raw: gzip.decompress(raw))
            if igzip:
                row("  isal.igzip.decompress (ISA-L)", lambda raw=raw: igzip.decompress(raw))
            row("  NIfTI header + array from the decompressed bytes", parse_and_array)
            row("  cast to float64", lambda ref=reference: ref.astype(np.float64))
            # NIfTI stores x fastest: nibabel's array is a Fortran-ordered view, and reversing its axes (a
            # transpose) is free; a reorientation that has to move the voxels costs one copy like this one
            row(
                "  voxels reordered in memory (Fortran to C order, one copy)",
                lambda ref=reference: np.ascontiguousarray(ref),
            )
            for name, ms in interleaved_ms(timed, args.repeats).items():
                rows.append((what, name, ms))
                print(f"  {name:58s} {ms:8.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nReady to paste ({load_line()}):\n")
    print("| file | step | ms |")
    print("|---|---|---|")
    for what, name, ms in rows:
        print(f"| {what} | {name.strip()} | {ms:.1f} |")


if __name__ == "__main__":
    main()
