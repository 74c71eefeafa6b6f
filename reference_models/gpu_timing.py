"""Time per training step of the authors' 3D U-Net with no extra loss, the exact and the sampled loss.

Paper size by default: 64^3 patches, batch 8, full width (32-64-128-256), Adam 2e-4, on synthetic
MM-WHS-format CT volumes written to a temporary folder and read back by the real loader. For each mode the
script trains the same initial weights on the same patches for ``--steps`` steps, records the wall time of
every step (``torch.cuda.synchronize()`` before and after, batch already on the device), and then reports the
median after ``--warmup`` steps, plus the AURC (risk = 1 - Dice, :func:`selectivekit.segmentation.aurc_dice`)
on held-out synthetic volumes.

    python -m reference_models.gpu_timing --steps 200 --out runs/gpu_timing          # GPU, ~2-4 minutes
    python -m reference_models.gpu_timing --steps 3 --size 32 --device cpu --out /tmp/t   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("none", "exact", "sampled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss(mode: str, seed: int):
    seg = torch.nn.CrossEntropyLoss()
    if mode == "none":
        return seg
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    # the authors' objective (a constant weight 2000, the paper's gradient): what the paper timed
    return UncertaintyAwareLoss(seg, setting="authors", margin=0.1, reduction="mean", pairs=mode, seed=seed)


def _data(args, workdir: Path):
    """Synthetic MM-WHS-format volumes: written as NIfTI and read back by the real loader.

    Without nibabel (some GPU images lack it) the same volumes go through the loader's steps in memory
    (label map, HU window, resampling), skipping only the file round trip.
    """
    from reference_models.data import mmwhs, synthetic

    # 64 x 64 x 40 voxels of 2.2 x 2.2 x 3.4 mm -> about 70^3 at 2 mm, so 64^3 patches fit
    shape, spacing, target = (64, 64, 40), (2.2, 2.2, 3.4), (2.0, 2.0, 2.0)
    try:
        import nibabel  # noqa: F401
    except ImportError:
        print("nibabel not installed: synthetic volumes are prepared in memory (no NIfTI round trip)")
        rng = np.random.default_rng(args.seed)
        volumes = []
        for i in range(args.volumes):
            hu, raw = synthetic.make_mmwhs_volume(rng, shape, spacing)
            image, label = mmwhs.resample(mmwhs.normalize_hu(hu), mmwhs.map_labels(raw), spacing, target)
            volumes.append(mmwhs.Volume(f"synthetic_{1001 + i}", image, label, target, spacing, shape))
    else:
        synthetic.write_synthetic_mmwhs(
            workdir, n_volumes=args.volumes, shape=shape, spacing=spacing, seed=args.seed
        )
        volumes = mmwhs.load_mmwhs(workdir, target_spacing=target)
    return volumes[: -args.eval_volumes], volumes[-args.eval_volumes :]


def run_mode(mode: str, args, train, test, device: torch.device) -> dict:
    from reference_models.data.patches import PatchSampler, sliding_window
    from reference_models.evaluate import Prediction, evaluate_part
    from reference_models.models_torch import UNet3D
    from selectivekit import uncertainty_from_logits

    torch.manual_seed(args.seed)
    model = UNet3D(1, 8, width=args.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    per_epoch = 12 * args.batch
    sampler = PatchSampler(
        [v.image[None] for v in train], [v.label for v in train], (args.size,) * 3, per_epoch, args.seed,
        foreground_fraction=1 / 3,
    )  # fmt: skip
    times = []
    step = 0
    epoch = 0
    while step < args.steps:
        x_all, y_all = sampler.epoch(epoch)
        loss_fn = _loss(mode, seed=args.seed * 1000 + epoch)
        for begin in range(0, per_epoch, args.batch):
            if step >= args.steps:
                break
            x = torch.from_numpy(x_all[begin : begin + args.batch]).to(device)
            y = torch.from_numpy(y_all[begin : begin + args.batch]).to(device)
            _sync(device)
            t0 = time.perf_counter()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            step += 1
        epoch += 1
    model.eval()
    predictions = []
    with torch.no_grad():
        for v in test:

            def predict(batch):
                return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

            logits = sliding_window(
                predict, v.image[None], (args.size,) * 3, num_classes=8, overlap=0.25, batch_size=args.batch
            )
            u = np.asarray(uncertainty_from_logits(logits, axis=0), np.float32)
            predictions.append(
                Prediction(v.case, "held-out", None, logits.argmax(0).astype(np.uint8), v.label, u)
            )
    result = evaluate_part(predictions, 8)
    timed = times[args.warmup :] if len(times) > args.warmup else times
    return {
        "median_step_s": statistics.median(timed),
        "mean_step_s": statistics.fmean(timed),
        "p90_step_s": float(np.percentile(timed, 90)),
        "steps_timed": len(timed),
        "final_loss": float(loss.detach()),
        "aurc": result.aurc,
        "dice_full_coverage": result.dice_full,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference_models.gpu_timing", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps per mode (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing (default 20)")
    parser.add_argument("--size", type=int, default=64, help="patch edge (default 64, the paper's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = 32-64-128-256)")
    parser.add_argument("--volumes", type=int, default=16, help="synthetic volumes written")
    parser.add_argument("--eval-volumes", type=int, default=4, help="of which held out for the AURC")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.size % 8:
        parser.error("--size must be a multiple of 8 (three poolings)")
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train, test = _data(args, Path(tmp))
    print(
        f"data: {len(train)} training and {len(test)} held-out volumes, {train[0].image.shape} voxels",
        flush=True,
    )
    results = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        t0 = time.perf_counter()
        results[mode] = run_mode(mode, args, train, test, device)
        r = results[mode]
        print(
            f"{mode:>8}: median {1000 * r['median_step_s']:.1f} ms/step (mean {1000 * r['mean_step_s']:.1f}, "
            f"p90 {1000 * r['p90_step_s']:.1f}), AURC {100 * r['aurc']:.3f}%, "
            f"Dice {100 * r['dice_full_coverage']:.2f}%  [{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    if "none" in results:
        for mode in results:
            results[mode]["step_time_vs_none"] = (
                results[mode]["median_step_s"] / results["none"]["median_step_s"]
            )
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "warmup", "size", "batch", "width", "volumes", "eval_volumes", "seed")
        },
        "modes": results,
        "total_s": time.perf_counter() - started,
    }
    (out / "gpu_timing.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'gpu_timing.json'} ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
