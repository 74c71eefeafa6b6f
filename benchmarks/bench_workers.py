"""``selectivekit evaluate --workers 2`` against one process, on gzipped NIfTI volumes.

Run: ``python benchmarks/bench_workers.py [--quick] [--n 40] [--side 128] [--source uncertainty|probs]
[--repeats 2] [--workers 2] [--keep DIR]``.

Data (written to a temporary folder under /tmp and removed at the end, unless ``--keep``): ``--n``
volumes of ``side^3`` voxels, 3 classes, ~5% wrong voxels; ``pred`` and ``label`` as uint8 ``.nii.gz``,
and either an uncertainty map (float32, ``--source uncertainty``, the default: ~8 MB a volume at 128^3)
or the class probabilities as one 4D float32 ``.nii.gz`` (x, y, z, c) (``--source probs``: ~3x that).
Correct voxels get ``u = exp(-U(0, 25))`` like a saturating softmax, wrong voxels ``U(0.05, 0.9)``.

Each measurement is one ``python -m selectivekit evaluate ... --quiet`` subprocess, timed from outside
(start-up included, as a user sees it); after one untimed warm-up run of each, 1 and N workers alternate,
``--repeats`` times each, and the median is reported with the ratio. The peak memory is the largest sum of
the resident set sizes of the process tree (the evaluate process and its workers), sampled from /proc every
20 ms. The CPU model is printed first and ``uptime`` with every measurement: the machine this was written on
is shared, and a loaded machine gives a smaller ratio.
The two reports are checked to be byte-equal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

K = 3


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        return f"load average: {load}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def write_data(folder: Path, n: int, side: int, source: str, seed: int = 0) -> int:
    import nibabel

    rng = np.random.default_rng(seed)
    for role in ("pred", "label", source):
        (folder / role).mkdir(parents=True, exist_ok=True)
    shape = (side, side, side)
    for i in range(n):
        label = rng.integers(0, K, size=shape, dtype=np.uint8)
        wrong = rng.random(shape, dtype=np.float32) < 0.05
        pred = np.where(wrong, (label + rng.integers(1, K, size=shape, dtype=np.uint8)) % K, label)
        pred = pred.astype(np.uint8)
        u = np.exp(-25.0 * rng.random(shape, dtype=np.float32))
        u[wrong] = 0.05 + 0.85 * rng.random(int(wrong.sum()), dtype=np.float32)
        nibabel.save(nibabel.Nifti1Image(pred, np.eye(4)), folder / "pred" / f"case_{i:03d}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), folder / "label" / f"case_{i:03d}.nii.gz")
        if source == "uncertainty":
            data = u
        else:  # the predicted class gets 1 - u, the others share u: max p = 1 - u
            data = np.empty((*shape, K), dtype=np.float32)
            data[...] = (u / (K - 1))[..., None]
            np.put_along_axis(data, pred[..., None].astype(np.int64), (1.0 - u)[..., None], axis=-1)
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), folder / source / f"case_{i:03d}.nii.gz")
    return sum(p.stat().st_size for p in folder.rglob("*.nii.gz"))


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        stack += _children(p)
    return total


def run_evaluate(
    data: Path, out: Path, source: str, workers: int, max_memory: str | None = None
) -> tuple[float, int]:
    """Wall time of one evaluate subprocess and the peak RSS of its process tree (bytes)."""
    cmd = [sys.executable, "-m", "selectivekit", "evaluate", "--pred", str(data / "pred")]
    cmd += ["--label", str(data / "label"), f"--{source}", str(data / source), "--num-classes", str(K)]
    cmd += ["--quiet", "--out", str(out), "--workers", str(workers)]
    if max_memory is not None:
        cmd += ["--max-memory", max_memory]
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            if os.path.isdir("/proc"):
                peak = max(peak, tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"evaluate --workers {workers} failed ({proc.returncode}): {err.decode()}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 volumes of 64^3 (a smoke run)")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--source", choices=("uncertainty", "probs"), default="uncertainty")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-memory", help="passed to evaluate (default: its own, exact while the data fit; 0: the grid)"
    )
    parser.add_argument("--keep", metavar="DIR", help="write (or reuse) the data here and keep it")
    args = parser.parse_args()
    if args.quick:
        args.n, args.side = 8, 64
    print(
        f"cpu: {cpu_model()} x {os.cpu_count()}; python {sys.version.split()[0]}; numpy {np.__version__}; "
        f"{uptime()}"
    )
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_workers_", dir="/tmp"))
    try:
        data = root / f"data_{args.n}x{args.side}_{args.source}"
        if not (data / "label").is_dir():
            start = time.perf_counter()
            size = write_data(data, args.n, args.side, args.source)
            print(
                f"wrote {args.n} volumes of {args.side}^3 ({size / 2**20:.0f} MiB gzipped) in "
                f"{time.perf_counter() - start:.1f} s"
            )
        else:
            size = sum(p.stat().st_size for p in data.rglob("*.nii.gz"))
            print(f"reusing {data} ({size / 2**20:.0f} MiB)")
        for workers in (1, args.workers):  # warm-up: the first run pays for cold imports and page cache
            elapsed, _ = run_evaluate(
                data, root / f"report_w{workers}", args.source, workers, args.max_memory
            )
            print(f"warm-up workers={workers}: {elapsed:6.2f} s (not counted) | {uptime()}")
        times: dict[int, list[float]] = {1: [], args.workers: []}
        peaks: dict[int, int] = {1: 0, args.workers: 0}
        for repeat in range(args.repeats):
            for workers in (1, args.workers):
                out = root / f"report_w{workers}"
                elapsed, peak = run_evaluate(data, out, args.source, workers, args.max_memory)
                times[workers].append(elapsed)
                peaks[workers] = max(peaks[workers], peak)
                print(
                    f"run {repeat + 1} workers={workers}: {elapsed:6.2f} s, peak RSS "
                    f"{peak / 2**20:6.0f} MiB | {uptime()}"
                )
        same = (root / "report_w1" / "report.json").read_bytes() == (
            root / f"report_w{args.workers}" / "report.json"
        ).read_bytes()
        one, many = statistics.median(times[1]), statistics.median(times[args.workers])
        print(
            f"\n{args.n} x {args.side}^3 ({args.source}): 1 worker {one:.2f} s, {args.workers} workers "
            f"{many:.2f} s (medians of {args.repeats}); speed-up {one / many:.2f}x; peak RSS "
            f"{peaks[1] / 2**20:.0f} MiB vs {peaks[args.workers] / 2**20:.0f} MiB; reports byte-equal: {same}"
        )
        print(f"conditions: {uptime()}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
