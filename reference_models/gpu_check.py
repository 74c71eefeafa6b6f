"""The prepared GPU check of the 3D study: baseline, the default uncertainty-aware setting and the authors'.

Paper size on synthetic MM-WHS (3D U-Net at width 1, 64^3 patches at 2 mm, batch 8, Adam) for the paper's
number of steps: 10 epochs of 27 patches per training volume (16 training volumes in fold 0, so 432
patches and 54 steps per epoch). Three models, the same initial weights and patches:

1. ``baseline``: cross-entropy only;
2. ``default``: the uncertainty-aware loss with this project's default (safe) setting;
3. ``authors``: the authors' exact setting (weight 2000 from the first step, pairs over the whole batch).

It prints Dice at full coverage and AURC (risk = 1 - Dice) for each and writes ``OUT/gpu_check.json``.
On an H100/H200 the whole check takes a few minutes (expected well under 8). ``--tiny`` runs the same code
at a CPU-sized setting (used by the tests)::

    python -m reference_models.gpu_check --device cuda --out runs/gpu_check
    python -m reference_models.gpu_check --tiny --device cpu --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from reference_models.config import LOSS_PRESETS, RunConfig

__all__ = ["check_configs", "main"]


def check_configs(out: str, device: str, tiny: bool = False, lr: float = 2e-4) -> dict[str, RunConfig]:
    """The three runs of the check (``baseline`` and ``default`` are trained in one reproduce call)."""
    size = (
        {"width": 0.125, "patch": 16, "spacing": 8.0, "epochs": 1, "samples_per_epoch": 16}
        if tiny
        else {"width": 1.0, "patch": 64, "spacing": 2.0, "epochs": 10, "samples_per_epoch": 16 * 27}
    )
    base = RunConfig(  # the paper's cross-entropy (the CPU-sized default adds a soft Dice)
        dataset="synthetic-mmwhs", folds=[0], device=device, lr=lr, progress=False, seg_loss="ce", **size
    )  # fmt: skip
    return {
        "default": dataclasses.replace(base, out=str(Path(out) / "default")),
        "authors": dataclasses.replace(
            base, out=str(Path(out) / "authors"), models=("uncertainty_aware",), **LOSS_PRESETS["authors"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_models.gpu_check", description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (the paper's 2e-4)")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke test of the same code")
    args = parser.parse_args(argv)
    from reference_models.pipeline import reproduce

    rows, started = {}, time.perf_counter()
    for name, cfg in check_configs(args.out, args.device, args.tiny, args.lr).items():
        t0 = time.perf_counter()
        report = reproduce(cfg, echo=lambda *_: None)
        for kind, m in report["models"].items():
            label = {"baseline": "baseline", "uncertainty_aware": name}[kind]
            rows[label] = {"dice_full_coverage": m["dice_full_coverage"], "aurc": m["aurc"]}
        rows[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
    rows["total_wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | Dice % at full coverage | AURC % |")
    print("|---|---|---|")
    for label in ("baseline", "default", "authors"):
        r = rows[label]
        print(f"| {label} | {100 * r['dice_full_coverage']:.2f} | {100 * r['aurc']:.3f} |")
    print(f"total {rows['total_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
