"""Command line: ``python -m reference_models reproduce [options]``, ``write-synthetic``, ``prior-baseline``.

Every error is one line on stderr: exit status 2 for options that cannot work (argparse's errors, invalid
numbers, a device this PyTorch cannot use, a checkpoint that ``--resume`` cannot continue from), 130 when
interrupted (Ctrl-C or SIGTERM; the checkpoints of the finished epochs stay, for ``--resume``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from reference_models.config import DATASETS, LOSS_PRESETS, MODEL_KINDS, RANK_WITHIN, SEG_LOSSES, RunConfig
from reference_models.study import STUDIES, parse_values, run_study

__all__ = ["DEFAULT_THREADS", "build_parser", "check_device", "main", "set_threads"]


DEFAULT_THREADS = 2
"""CPU threads of the training kernels unless ``--threads`` says otherwise (the documented runs used 2)."""


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: ... (see PROG --help)``, exit 2), no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _number(kind: type, low: float, *, inclusive: bool = True) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) ``>= low`` (``> low`` when not ``inclusive``)."""
    bound = f"{'>=' if inclusive else '>'} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            name = "an integer" if kind is int else "a finite number"
            msg = f"must be {name} {bound}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


_POSITIVE_INT = _number(int, 1)
_COUNT = _number(int, 0)
_POSITIVE = _number(float, 0.0, inclusive=False)
_NON_NEGATIVE = _number(float, 0.0)


def _folds(text: str) -> list[int]:
    """A comma list of integers >= 0 (``0,1,2``)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        msg = f"must be a comma list of integers >= 0, e.g. 0,1,2, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    if len(set(values)) != len(values):
        msg = f"lists a value twice, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    proto = sub.add_parser(
        "protocol",
        help="the pre-registered study of the loss's default (docs/reproduction.md): 3d or 2d",
        description="Train every run of the protocol that has no result file yet (resumable), one CPU "
        "thread each, then write OUT/protocol.{json,md}.",
    )
    proto.add_argument("name", choices=("3d", "2d"))
    proto.add_argument("stage", nargs="?", default="all", choices=("tuning", "evaluation", "all", "analyse"))
    proto.add_argument("--out", help="output folder (default studies/protocol-NAME, committed)")
    proto.add_argument("--jobs", type=_POSITIVE_INT, default=2, help="runs at a time (default 2)")
    example = sub.add_parser(
        "uncertainty-example",
        help="which uncertainty map? five baselines on the synthetic GlaS: MSP, entropy, MI, ensemble, ECE",
        description="Train five baseline U-Nets on the synthetic GlaS (resumable: one logits file a model), "
        "then compare their uncertainty maps and calibration on test part B (temperature fitted on part A); "
        "write OUT/uncertainty.{json,md}, OUT/dice_coverage.png and OUT/reliability.png.",
    )
    example.add_argument("--out", default="studies/uncertainty-example", help="output folder (committed)")
    example.add_argument("--epochs", type=_POSITIVE_INT, help="epochs per model (default per dataset)")
    syn = sub.add_parser("write-synthetic", help="write a synthetic dataset in the real on-disk format")
    syn.add_argument("kind", choices=("glas", "mmwhs"))
    syn.add_argument("directory")
    syn.add_argument("--seed", type=_COUNT, default=0)
    prior = sub.add_parser(
        "prior-baseline",
        help="per-fold held-out Dice of a position prior x Gaussian intensity classifier (no learning)",
        description="How much of an MM-WHS task is atlas lookup: fit the reference classifier of "
        "reference_models/prior_classifier.py on the training volumes of each in-order fold and print its "
        "per-structure Dice on the held-out volumes.",
    )
    prior.add_argument("--dataset", choices=("synthetic-mmwhs", "mmwhs"), default="synthetic-mmwhs")
    prior.add_argument("--data-dir", help="dataset folder (required for mmwhs; synthetic: cache dir)")
    prior.add_argument("--spacing", type=_POSITIVE, help="resampling spacing in mm (default per dataset)")
    prior.add_argument("--alpha", type=_POSITIVE, default=0.5, help="pseudo-count of the prior (0.5)")
    prior.add_argument("--sigma", type=_NON_NEGATIVE, default=0.0, help="prior smoothing, voxels (0)")
    return parser


def _add_run_options(
    parser: argparse.ArgumentParser, out: str | None = "runs/reproduce", seeds: str | None = None
) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic-glas")
    parser.add_argument("--data-dir", help="dataset folder (required for glas/mmwhs; synthetic: cache dir)")
    parser.add_argument("--framework", choices=("torch", "keras"), default="torch")
    parser.add_argument("--epochs", type=_POSITIVE_INT, help="epochs (default per dataset)")
    parser.add_argument("--out", default=out, help=f"output folder (default {out or 'runs/study-NAME'})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (PyTorch)")
    parser.add_argument(
        "--threads", type=_COUNT, default=DEFAULT_THREADS,
        help=f"CPU threads of the training kernels (PyTorch intra-op, TensorFlow intra- and inter-op; "
        f"default {DEFAULT_THREADS}); runs repeat bit for bit only with the same count (0: the library's "
        "default)",
    )  # fmt: skip
    parser.add_argument(
        "--pairs", choices=("exact", "sampled"), default="exact",
        help="uncertainty loss over all pairs (exact) or the paper's 300 x 6600 sample",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("default", "authors"), default="default",
        help="authors: MM-WHS inputs cropped around the ground truth (leaks labels)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    parser.add_argument(
        "--width", type=_POSITIVE, help="channel multiplier of the U-Net (default per dataset)"
    )
    parser.add_argument("--batch-size", type=_POSITIVE_INT, default=8)
    parser.add_argument("--seed", type=_COUNT, default=42)
    parser.add_argument(
        "--seeds", type=_folds, default=seeds,
        help="several training seeds, e.g. 0,1,2: mean ± std and paired tests"
        + ("" if seeds is None else f" (default {seeds})"),
    )  # fmt: skip
    parser.add_argument("--lr", type=_POSITIVE, help="Adam learning rate (default per dataset)")
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
    parser.add_argument(
        "--weight", type=_NON_NEGATIVE, help="weight of the uncertainty term (default per setting)"
    )
    parser.add_argument("--margin", type=_NON_NEGATIVE, default=0.1)
    parser.add_argument("--patch", type=_POSITIVE_INT, help="training patch edge (default per dataset)")
    parser.add_argument(
        "--samples-per-epoch", type=_POSITIVE_INT, help="patches per epoch (default per dataset)"
    )
    parser.add_argument("--folds", type=_folds, help="MM-WHS folds to run, e.g. 0,1 (default: all)")
    parser.add_argument(
        "--spacing", type=_POSITIVE, help="MM-WHS resampling spacing in mm (default per dataset)"
    )
    parser.add_argument("--unc-start", type=_NON_NEGATIVE, help="epoch at which the uncertainty term starts")
    parser.add_argument("--unc-ramp", type=_NON_NEGATIVE, help="epochs over which its weight ramps up to 1")
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
    parser.add_argument(
        "--log-every", type=_COUNT, default=0, help="write a curve point every N steps (0: off)"
    )
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma list of models to train")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset=args.dataset, data_dir=args.data_dir, framework=args.framework, epochs=args.epochs,
        out=args.out, device=args.device, pairs=args.pairs, protocol=args.protocol, resume=args.resume,
        width=args.width, batch_size=args.batch_size, seed=args.seed, lr=args.lr, weight=args.weight,
        margin=args.margin, patch=args.patch, samples_per_epoch=args.samples_per_epoch, folds=args.folds,
        spacing=args.spacing, models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        progress=not args.no_progress and sys.stderr.isatty(),  # bars on a terminal only, never into a log
        unc_start=args.unc_start, unc_ramp=args.unc_ramp,
        rank_within=args.rank_within, loss_setting=args.loss_setting, log_every=args.log_every,
        seeds=args.seeds, slices=args.slices, unc_sides=args.unc_sides, unc_region=args.unc_region,
        unc_push=args.unc_push, seg_loss=args.seg_loss,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for a run that cannot start, 130 interrupted)."""
    restore = _terminate_as_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(
            "python -m reference_models: interrupted; the checkpoints of the finished epochs are kept in "
            "OUT/checkpoints (continue with --resume).",
            file=sys.stderr,
        )
        return 130
    finally:
        restore()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # the one-line error above, or --help
        return exc.code if isinstance(exc.code, int) else 2
    where = f"{parser.prog} {args.command}"
    if args.command == "write-synthetic":
        from reference_models.datasets import get_dataset

        print(get_dataset(f"synthetic-{args.kind}").write_synthetic(args.directory, seed=args.seed))
        return 0
    if args.command == "protocol":
        from reference_models.protocol import analyse, run_protocol

        out = args.out or f"studies/protocol-{args.name}"
        try:
            if args.stage == "analyse":
                analyse(args.name, out)
            else:
                run_protocol(args.name, out, stage=args.stage, jobs=args.jobs)
        except ValueError as exc:
            print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        return 0
    if args.command == "uncertainty-example":
        from reference_models.uncertainty_example import run_example

        run_example(args.out, base={"epochs": args.epochs} if args.epochs else None)
        return 0
    if args.command == "prior-baseline":
        from reference_models.prior_classifier import main as prior_baseline

        try:
            prior_baseline(args.dataset, args.data_dir, args.spacing, alpha=args.alpha, sigma=args.sigma)
        except ValueError as exc:  # bad options, a missing or unreadable dataset
            print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        return 0
    if args.command == "study" and args.out is None:
        args.out = f"runs/study-{args.name}"
    from reference_models.checkpoint import CheckpointError

    try:  # everything that can be checked before any training
        cfg = config_from_args(args).resolved()
        values = parse_values(args.name, args.values) if args.command == "study" else None
        check_device(cfg.framework, cfg.device)
        set_threads(cfg.framework, args.threads)
    except ValueError as exc:
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        if args.command == "study":
            run_study(args.name, cfg, args.seeds, values)
            return 0
        from reference_models.pipeline import reproduce

        reproduce(cfg)
        return 0
    except CheckpointError as exc:  # --resume with a checkpoint it cannot continue from
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def check_device(framework: str, name: str) -> None:
    """``--device`` names a device this PyTorch can use; a one-line `ValueError` otherwise.

    ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` and ``mps``. The Keras trainer
    places its work through TensorFlow (``CUDA_VISIBLE_DEVICES``) and takes only ``auto`` or ``cpu``.
    """
    if framework != "torch":
        if name not in ("auto", "cpu"):
            msg = (
                f"`--device` {name!r} applies to the PyTorch trainer; the Keras trainer uses the GPUs "
                "TensorFlow sees (choose them with CUDA_VISIBLE_DEVICES)."
            )
            raise ValueError(msg)
        return
    if name == "auto":
        return
    import torch

    expected = "`--device` must be auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        msg = f"{expected}, got {name!r}."
        raise ValueError(msg) from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            msg = (
                f"`--device {name}`: no CUDA device is available (PyTorch {torch.__version__}, {build}); "
                "use --device cpu or auto."
            )
            raise ValueError(msg)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            msg = f"`--device {name}`: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
            raise ValueError(msg)
        return
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            msg = f"`--device {name}`: MPS (Apple GPUs) is not available in this PyTorch; use --device cpu."
            raise ValueError(msg)
        return
    msg = f"{expected}, got {name!r}."
    raise ValueError(msg)


def set_threads(framework: str, threads: int) -> None:
    """Fix the CPU thread count of the training kernels (0 keeps the library's default).

    The kernels split their sums over the threads, so another count rounds differently: runs repeat bit for
    bit with the same count (and the same library versions and CPU instruction set), not across counts.
    """
    if threads <= 0:
        return
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow already runs in this process (``main`` called from Python after other TensorFlow
        # work): its count cannot change any more; the report records the count it runs with
        pass


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM raises KeyboardInterrupt (main thread only); returns what restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (OSError, ValueError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
