"""``selectivekit evaluate`` against nnU-Net v2's and MONAI's Dice evaluation of the same folder.

Run: ``python benchmarks/bench_evaluate_peers.py [--cases 16] [--size 128] [--classes 4] [--repeats 2]
[--keep DIR]``.

Data (a temporary folder under /tmp, removed at the end unless ``--keep``): ``--cases`` volumes of
``size^3`` voxels and ``--classes`` classes, in the layout ``selectivekit evaluate`` and nnU-Net both read
(one file per case, the same name in each folder)::

    pred/case_000.nii.gz   uint8, predicted classes
    label/case_000.nii.gz  uint8, true classes (smooth regions: a random 8x-coarser field, upsampled)
    unc/case_000.nii.gz    float32 uncertainty map (wrong voxels tend to be more uncertain)

About 3% of the predicted voxels are wrong; every class occurs in every prediction and label, so that no
tool has an empty class to skip.

Four programs read the folder, each as a fresh subprocess timed from outside, start-up and imports
included, as a user sees it (a warm-up read puts the files in the page cache first; then the programs
alternate, ``--repeats`` times each, and the median is reported):

* nnU-Net v2: ``compute_metrics_on_folder`` with 2 processes and ``SimpleITKIO`` (nnU-Net's reader for
  NIfTI), labels ``1 .. K-1``: the Dice of each class in each case;
* MONAI: a loop of ``LoadImage`` (nibabel), ``one_hot`` and ``DiceMetric(include_background=False,
  reduction="mean_batch")``, in one process, as in MONAI's tutorials;
* ``python -m selectivekit evaluate --workers 1`` and ``--workers 2`` (the full report: AURC, Dice at
  coverages, per image and per class, curve, plots).

The peak memory is the largest summed resident set of each program's process tree, sampled every 20 ms.
The agreement check compares, for each class, the mean over cases of the Dice at full coverage (our
``per_image[].dice_full_per_class``) with nnU-Net's and MONAI's, to ``--tolerance`` (MONAI computes in
float32); the script exits with status 1 when any differs. nnU-Net and MONAI are skipped with a message when
they do not import.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import load_line, run_measured

OURS_1 = "selectivekit evaluate --workers 1"
OURS_2 = "selectivekit evaluate --workers 2"
NNUNET = "nnU-Net v2 compute_metrics_on_folder (2 processes)"
MONAI = "MONAI DiceMetric loop (1 process)"


def write_data(folder: Path, cases: int, size: int, classes: int, seed: int = 0) -> int:
    """Write the three folders; returns their size in bytes."""
    import nibabel

    rng = np.random.default_rng(seed)
    for role in ("pred", "label", "unc"):
        (folder / role).mkdir(parents=True, exist_ok=True)
    coarse = -(-size // 8)
    shape = (size, size, size)
    for i in range(cases):
        field = rng.integers(0, classes, size=(coarse,) * 3, dtype=np.uint8)
        label = np.ascontiguousarray(field.repeat(8, 0).repeat(8, 1).repeat(8, 2)[:size, :size, :size])
        label.reshape(-1)[:classes] = np.arange(classes)  # every class in every label
        wrong = rng.random(shape, dtype=np.float32) < 0.03
        shift = rng.integers(1, classes, size=shape, dtype=np.uint8)
        pred = np.where(wrong, (label + shift) % classes, label).astype(np.uint8)
        pred.reshape(-1)[:classes] = np.arange(classes)
        wrong = pred != label
        u = np.exp(-25.0 * rng.random(shape, dtype=np.float32))
        u[wrong] = 0.05 + 0.85 * rng.random(int(wrong.sum()), dtype=np.float32)
        name = f"case_{i:03d}.nii.gz"
        for role, data in (("pred", pred), ("label", label), ("unc", u)):
            nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), folder / role / name)
    return sum(p.stat().st_size for p in folder.rglob("*.nii.gz"))


def run_nnunet(data: Path, classes: int) -> dict[int, float]:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    labels = list(range(1, classes))
    result = compute_metrics_on_folder(
        str(data / "label"), str(data / "pred"), None, SimpleITKIO(), ".nii.gz", labels, num_processes=2
    )
    return {c: float(result["mean"][c]["Dice"]) for c in labels}


def run_monai(data: Path, classes: int) -> dict[int, float]:
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)  # nibabel for NIfTI
    metric = DiceMetric(include_background=False, reduction="mean_batch")
    for path in sorted((data / "pred").glob("*.nii.gz")):
        pred = torch.as_tensor(loader(str(path)))[None, None].long()
        label = torch.as_tensor(loader(str(data / "label" / path.name)))[None, None].long()
        metric(y_pred=one_hot(pred, classes), y=one_hot(label, classes))
    values = metric.aggregate()
    return {c: float(values[c - 1]) for c in range(1, classes)}


def ours_dice(report: Path) -> dict[int, float]:
    """Mean over images of each class's Dice at full coverage, from a ``report.json``."""
    data = json.loads(report.read_text())
    per_image = np.array([image["dice_full_per_class"] for image in data["per_image"]], dtype=float)
    return {int(c): float(v) for c, v in zip(data["classes"], per_image.mean(axis=0), strict=True)}


def check_agreement(dice: dict[str, dict[int, float]], reference: str, tolerance: float) -> list[str]:
    """The disagreements with ``dice[reference]`` (one line each; empty when all agree): a class missing
    on either side, or a mean Dice that differs by more than ``tolerance``."""
    problems = []
    ref = dice[reference]
    for tool, values in dice.items():
        if tool == reference:
            continue
        if set(values) != set(ref):
            problems.append(f"{tool}: classes {sorted(values)} against {sorted(ref)}")
            continue
        for c in sorted(ref):
            if not abs(values[c] - ref[c]) <= tolerance:
                problems.append(
                    f"{tool}: class {c} mean Dice {values[c]:.9f} against {ref[c]:.9f} "
                    f"(|diff| {abs(values[c] - ref[c]):.2e} > {tolerance:g})"
                )
    return problems


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _peer_command(peer: str, data: Path, classes: int) -> list[str]:
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--run-peer", peer, "--data", str(data), "--classes", str(classes)]


def _ours_command(data: Path, classes: int, workers: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "selectivekit", "evaluate", "--pred", str(data / "pred")]
    cmd += ["--label", str(data / "label"), "--uncertainty", str(data / "unc")]
    cmd += ["--num-classes", str(classes), "--quiet", "--out", str(out), "--workers", str(workers)]
    return cmd


def benchmark(
    data: Path, classes: int, repeats: int, tolerance: float, workers: tuple[int, ...] = (1, 2)
) -> tuple[dict, list[str]]:
    """Time every program on ``data`` (ours with each of ``workers``, 1 first); returns
    ``({tool: (median s, peak bytes, dice)}, problems)``."""
    programs: dict[str, list[str]] = {}
    if _available("nnunetv2"):
        programs[NNUNET] = _peer_command("nnunet", data, classes)
    else:
        print("nnU-Net v2: not installed, skipped (pip install nnunetv2)")
    if _available("monai"):
        programs[MONAI] = _peer_command("monai", data, classes)
    else:
        print("MONAI: not installed, skipped (pip install monai)")
    reports = {}
    for n, tool in ((1, OURS_1), (2, OURS_2)):
        if n in workers:
            reports[tool] = data.parent / f"report_w{n}"
            programs[tool] = _ours_command(data, classes, n, reports[tool])
    for path in sorted(data.rglob("*.nii.gz")):  # warm-up: every file in the page cache
        path.read_bytes()
    times: dict[str, list[float]] = {tool: [] for tool in programs}
    peaks: dict[str, int] = dict.fromkeys(programs, 0)
    dice: dict[str, dict[int, float]] = {}
    for repeat in range(repeats):
        for tool, cmd in programs.items():
            elapsed, peak, out = run_measured(cmd)
            times[tool].append(elapsed)
            peaks[tool] = max(peaks[tool], peak)
            if tool in reports:
                dice[tool] = ours_dice(reports[tool] / "report.json")
            else:
                dice[tool] = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
            print(f"  run {repeat + 1} {tool:52s} {elapsed:7.2f} s, peak RSS {peak / 2**20:6.0f} MiB")
    results = {tool: (statistics.median(times[tool]), peaks[tool], dice[tool]) for tool in programs}
    return results, check_agreement(dice, OURS_1, tolerance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="volumes of size^3 voxels")
    parser.add_argument("--classes", type=int, default=4, help="classes, background included")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--keep", metavar="DIR", help="write (or reuse) the data here and keep it")
    parser.add_argument("--run-peer", choices=("nnunet", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_peer:  # one measured subprocess: print the mean Dice per class as JSON
        run = run_nnunet if args.run_peer == "nnunet" else run_monai
        print(json.dumps(run(args.data, args.classes)))
        return 0
    if args.cases < 1 or args.size < 2 or args.classes < 2:
        parser.error("--cases must be >= 1, --size >= 2 and --classes >= 2")
    print(load_line())
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_peers_", dir="/tmp"))
    try:
        data = root / f"data_{args.cases}x{args.size}_k{args.classes}"
        if not (data / "unc").is_dir():
            size = write_data(data, args.cases, args.size, args.classes)
        else:
            size = sum(p.stat().st_size for p in data.rglob("*.nii.gz"))
        print(
            f"{args.cases} cases of {args.size}^3, {args.classes} classes, gzipped NIfTI "
            f"({size / 2**20:.0f} MiB); each program a fresh subprocess, medians of {args.repeats}"
        )
        results, problems = benchmark(data, args.classes, args.repeats, args.tolerance)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    base = results.get(NNUNET, results[OURS_1])[0]
    base_name = "nnU-Net" if NNUNET in results else "1 worker"
    print(f"\n{load_line()}")
    print(f"| program | wall time | vs {base_name} | peak RSS (process tree) | mean Dice per class |")
    print("|---|---|---|---|---|")
    for tool, (seconds, peak, dice) in results.items():
        values = ", ".join(f"{dice[c]:.6f}" for c in sorted(dice))
        print(f"| {tool} | {seconds:.2f} s | {seconds / base:.2f}x | {peak / 2**20:.0f} MiB | {values} |")
    if problems:
        print("\nDice at full coverage DISAGREE:\n" + "\n".join(problems))
        return 1
    others = [tool for tool in results if tool != OURS_1]
    print(f"\nDice at full coverage agree (mean per class, to {args.tolerance:g}) with: {', '.join(others)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
