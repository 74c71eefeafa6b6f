"""Peak memory of reading one case from several probability folders (``evaluate --probs A B C D E``).

Run: ``python benchmarks/bench_ensemble_memory.py [--folders 5] [--side 96] [--classes 3]``.

Writes ``--folders`` folders of one ``.npy`` probability volume each (float32, shape (C, side, side, side),
classes first), then measures, side by side in this process, the peak of the memory that NumPy allocates
(``tracemalloc``) and of the resident set (``VmHWM``) while ``selectivekit.io.read_case`` reads the case:

- ``one folder, msp``: the single-prediction path, for reference;
- ``N folders, <measure>``: the ensemble path (one volume read at a time into a ``PredictiveAccumulator``);
- ``stacked``: what reading every volume first and stacking them costs (``np.stack``, then the mean).

The printed ratios are peak / the size of one probability volume. The library's claim is that the ensemble
path holds one volume and the accumulator's state (the running mean, the squared deviations and the votes,
``3 C`` maps, plus the entropy sum) whatever the number of folders, so its peak does not grow with
``--folders`` while the stacked one does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import load_line, peak_rss_extra_mib, peak_traced_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=5)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()

    from selectivekit import io as skio

    rng = np.random.default_rng(0)
    shape = (args.side,) * 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        label = rng.integers(0, args.classes, size=shape).astype(np.uint8)
        (root / "label").mkdir()
        np.save(root / "label" / "case.npy", label)
        folders = {"label": root / "label"}
        for i in range(args.folders):
            logits = rng.normal(size=(args.classes, *shape)).astype(np.float32)
            probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
            role = "probs" if i == 0 else f"probs#{i + 1}"
            folders[role] = root / f"fold_{i}"
            folders[role].mkdir()
            np.save(folders[role] / "case.npy", probs.astype(np.float32))
            del logits, probs
        roles = [role for role in folders if role != "label"]
        case = skio.pair_files(folders, array_roles=roles)[0]
        volume_mib = args.classes * np.prod(shape) * 4 / 2**20

        def read(probs_roles, measure):
            return lambda: skio.read_case(
                case, num_classes=args.classes, pred=None, uncertainty=None, probs=probs_roles,
                uncertainty_measure=measure,
            )  # fmt: skip

        def stacked():
            stack = np.stack([np.load(case.files[role]) for role in roles])
            return stack.mean(axis=0)

        runs = [
            ("one folder, msp", read(roles[:1], "msp")),
            (f"{len(roles)} folders, msp", read(roles, "msp")),
            (f"{len(roles)} folders, mutual-information", read(roles, "mutual-information")),
            (f"{len(roles)} volumes stacked (np.stack + mean)", stacked),
        ]
        print(load_line())
        print(
            f"one probability volume: {args.classes} x {args.side}^3 float32 = {volume_mib:.1f} MiB; "
            f"{len(roles)} folders"
        )
        print(
            f"{'what':45s} {'traced peak MiB':>16s} {'x volume':>9s} {'RSS peak MiB':>13s} {'x volume':>9s}"
        )
        for name, run in runs:
            run()  # warm-up (imports, allocator caches)
            traced = peak_traced_mib(run)
            rss = peak_rss_extra_mib(run)
            print(f"{name:45s} {traced:16.1f} {traced / volume_mib:9.2f} {rss:13.1f} {rss / volume_mib:9.2f}")


if __name__ == "__main__":
    main()
