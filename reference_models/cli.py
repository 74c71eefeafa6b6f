"""Command line: ``python -m reference_models reproduce [options]`` and ``write-synthetic``."""

from __future__ import annotations

import argparse
import sys

from reference_models.config import DATASETS, LOSS_PRESETS, MODEL_KINDS, RANK_WITHIN, SEG_LOSSES, RunConfig
from reference_models.study import STUDIES, parse_values, run_study

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
    _add_run_options(rep)
    study = sub.add_parser(
        "study",
        help="the paper's Appendix D studies (Figure 5): sample-size, two-stage or weight",
        description="Train the uncertainty-aware model at several settings of one hyper-parameter with "
        "every seed; write OUT/study.{json,md,png}. Other options as for reproduce.",
    )
    study.add_argument("name", choices=STUDIES)
    study.add_argument("--values", help="settings to visit, e.g. 100x2200,exact / 0,5,10 / 500,2000")
    _add_run_options(study, out=None, seeds="0,1,2")
    syn = sub.add_parser("write-synthetic", help="write a synthetic dataset in the real on-disk format")
    syn.add_argument("kind", choices=("glas", "mmwhs"))
    syn.add_argument("directory")
    syn.add_argument("--seed", type=int, default=0)
    return parser


def _add_run_options(parser: argparse.ArgumentParser, out: str | None = "runs/reproduce", seeds=None) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic-glas")
    parser.add_argument("--data-dir", help="dataset folder (required for glas/mmwhs; synthetic: cache dir)")
    parser.add_argument("--framework", choices=("torch", "keras"), default="torch")
    parser.add_argument("--epochs", type=int, help="epochs (default per dataset)")
    parser.add_argument("--out", default=out, help=f"output folder (default {out or 'runs/study-NAME'})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (torch)")
    parser.add_argument(
        "--pairs", choices=("exact", "sampled"), default="exact",
        help="uncertainty loss over all pairs (exact) or the paper's 300 x 6600 sample",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("default", "authors"), default="default",
        help="authors: MM-WHS inputs cropped around the ground truth (leaks labels)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    parser.add_argument("--width", type=float, help="channel multiplier of the U-Net (default per dataset)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--seeds", type=_folds, help="several training seeds, e.g. 0,1,2: mean ± std and paired tests"
    )
    parser.add_argument("--lr", type=float, help="Adam learning rate (default per dataset)")
    parser.add_argument(
        "--loss-setting", choices=tuple(LOSS_PRESETS), default="default",
        help="uncertainty term: the safe default, or the authors' exact objective (weight 2000, all of the "
        "batch, from the first step); --weight/--unc-start/--unc-ramp/--rank-within override either",
    )  # fmt: skip
    parser.add_argument(
        "--seg-loss", choices=SEG_LOSSES,
        help="segmentation term of both models: cross-entropy (the paper's) or cross-entropy + soft Dice "
        "(default per dataset: ce+dice for synthetic-mmwhs, ce otherwise)",
    )  # fmt: skip
    parser.add_argument("--weight", type=float, help="weight of the uncertainty term (default per setting)")
    parser.add_argument("--margin", type=float, default=0.1)
    parser.add_argument("--patch", type=int, help="training patch edge (default per dataset)")
    parser.add_argument("--samples-per-epoch", type=int, help="patches per epoch (default per dataset)")
    parser.add_argument("--folds", type=_folds, help="MM-WHS folds to run, e.g. 0,1 (default: all)")
    parser.add_argument("--spacing", type=float, help="MM-WHS resampling spacing in mm (default per dataset)")
    parser.add_argument("--unc-start", type=float, help="epoch at which the uncertainty term starts")
    parser.add_argument("--unc-ramp", type=float, help="epochs over which its weight ramps up to 1")
    parser.add_argument(
        "--rank-within", choices=RANK_WITHIN,
        help="rank pairs across the whole batch or within each image",
    )  # fmt: skip
    parser.add_argument(
        "--unc-sides", choices=("both", "correct", "wrong"), default="both",
        help="which voxels the uncertainty term's gradient reaches (study option)",
    )  # fmt: skip
    parser.add_argument(
        "--unc-region", choices=("all", "foreground-box"), default="all",
        help="rank every voxel, or only those inside each training image's labelled box (study option)",
    )  # fmt: skip
    parser.add_argument(
        "--unc-push", choices=("uniform", "label", "binary"),
        help="where the term moves a wrong voxel: towards the uniform distribution (the paper's gradient) or "
        "from its predicted class to its true class",
    )  # fmt: skip
    parser.add_argument("--slices", action="store_true", help="MM-WHS in 2D: axial slices (study option)")
    parser.add_argument("--log-every", type=int, default=0, help="write a curve point every N steps (0: off)")
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma list of models to train")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset=args.dataset, data_dir=args.data_dir, framework=args.framework, epochs=args.epochs,
        out=args.out, device=args.device, pairs=args.pairs, protocol=args.protocol, resume=args.resume,
        width=args.width, batch_size=args.batch_size, seed=args.seed, lr=args.lr, weight=args.weight,
        margin=args.margin, patch=args.patch, samples_per_epoch=args.samples_per_epoch, folds=args.folds,
        spacing=args.spacing, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        progress=not args.no_progress, unc_start=args.unc_start, unc_ramp=args.unc_ramp,
        rank_within=args.rank_within, loss_setting=args.loss_setting, log_every=args.log_every,
        seeds=args.seeds, slices=args.slices, unc_sides=args.unc_sides, unc_region=args.unc_region,
        unc_push=args.unc_push, seg_loss=args.seg_loss,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write-synthetic":
        from reference_models.datasets import get_dataset

        print(get_dataset(f"synthetic-{args.kind}").write_synthetic(args.directory, seed=args.seed))
        return 0
    if args.command == "study" and args.out is None:
        args.out = f"runs/study-{args.name}"
    cfg = config_from_args(args)
    try:
        cfg = cfg.resolved()
        values = parse_values(args.name, args.values) if args.command == "study" else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "study":
        seeds = args.seeds if isinstance(args.seeds, list) else _folds(args.seeds)
        run_study(args.name, cfg, seeds, values)
        return 0
    from reference_models.pipeline import reproduce

    reproduce(cfg)
    return 0
