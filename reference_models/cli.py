"""Command line: ``python -m reference_models reproduce [options]`` and ``write-synthetic``."""

from __future__ import annotations

import argparse
import sys

from reference_models.config import DATASETS, MODEL_KINDS, RunConfig

__all__ = ["build_parser", "main"]


def _folds(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_models",
        description="Reference trainers for Ding et al., MIDL 2020 (uncertainty-aware training).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "reproduce",
        help="train baseline and uncertainty-aware models, evaluate, write OUT/report.{md,json} + figures",
        description="With no options: the built-in synthetic GlaS-format dataset with PyTorch on CPU "
        "(a few minutes on 2 cores).",
    )
    rep.add_argument("--dataset", choices=DATASETS, default="synthetic-glas")
    rep.add_argument("--data-dir", help="dataset folder (required for glas/mmwhs; synthetic: cache dir)")
    rep.add_argument("--framework", choices=("torch", "keras"), default="torch")
    rep.add_argument("--epochs", type=int, help="epochs (default per dataset)")
    rep.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    rep.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (torch)")
    rep.add_argument(
        "--pairs", choices=("exact", "sampled"), default="exact",
        help="uncertainty loss over all pairs (exact) or the paper's 300 x 6600 sample",
    )  # fmt: skip
    rep.add_argument(
        "--protocol", choices=("default", "authors"), default="default",
        help="authors: MM-WHS inputs cropped around the ground truth (leaks labels)",
    )  # fmt: skip
    rep.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    rep.add_argument("--width", type=float, help="channel multiplier of the U-Net (default per dataset)")
    rep.add_argument("--batch-size", type=int, default=8)
    rep.add_argument("--seed", type=int, default=42)
    rep.add_argument("--lr", type=float, default=2e-4)
    rep.add_argument("--weight", type=float, default=2000.0, help="weight of the uncertainty term")
    rep.add_argument("--margin", type=float, default=0.1)
    rep.add_argument("--patch", type=int, help="training patch edge (default per dataset)")
    rep.add_argument("--samples-per-epoch", type=int, help="patches per epoch (default per dataset)")
    rep.add_argument("--folds", type=_folds, help="MM-WHS folds to run, e.g. 0,1 (default: all)")
    rep.add_argument("--spacing", type=float, help="MM-WHS resampling spacing in mm (default per dataset)")
    rep.add_argument("--models", default=",".join(MODEL_KINDS), help="comma list of models to train")
    rep.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    syn = sub.add_parser("write-synthetic", help="write a synthetic dataset in the real on-disk format")
    syn.add_argument("kind", choices=("glas", "mmwhs"))
    syn.add_argument("directory")
    syn.add_argument("--seed", type=int, default=0)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset=args.dataset, data_dir=args.data_dir, framework=args.framework, epochs=args.epochs,
        out=args.out, device=args.device, pairs=args.pairs, protocol=args.protocol, resume=args.resume,
        width=args.width, batch_size=args.batch_size, seed=args.seed, lr=args.lr, weight=args.weight,
        margin=args.margin, patch=args.patch, samples_per_epoch=args.samples_per_epoch, folds=args.folds,
        spacing=args.spacing, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        progress=not args.no_progress,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write-synthetic":
        from reference_models.data import synthetic

        writer = synthetic.write_synthetic_glas if args.kind == "glas" else synthetic.write_synthetic_mmwhs
        print(writer(args.directory, seed=args.seed))
        return 0
    cfg = config_from_args(args)
    try:
        cfg = cfg.resolved()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from reference_models.pipeline import reproduce

    reproduce(cfg)
    return 0
