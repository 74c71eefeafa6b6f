"""Command-line parsing and configuration errors (no training here)."""

from __future__ import annotations

import json

import pytest

from reference_models.cli import build_parser, config_from_args, main
from reference_models.config import RunConfig
from reference_models.data.glas import load_glas


def test_defaults_are_the_builtin_synthetic_glas_job():
    cfg = config_from_args(build_parser().parse_args(["reproduce"])).resolved()
    assert (cfg.dataset, cfg.framework, cfg.pairs, cfg.protocol) == (
        "synthetic-glas",
        "torch",
        "exact",
        "default",
    )
    assert (cfg.batch_size, cfg.lr, cfg.weight, cfg.margin, cfg.seed) == (8, 2e-4, 200.0, 0.1, 42)
    assert (cfg.loss_setting, cfg.unc_push, cfg.unc_start, cfg.unc_ramp) == ("default", "binary", 5.0, 5.0)
    assert cfg.patch % 16 == 0  # four poolings


def test_all_documented_options_parse(tmp_path):
    args = build_parser().parse_args(
        [
            "reproduce", "--dataset", "mmwhs", "--data-dir", str(tmp_path), "--framework", "keras",
            "--epochs", "3", "--out", str(tmp_path / "o"), "--device", "cuda:1", "--pairs", "sampled",
            "--protocol", "authors", "--resume", "--width", "0.5", "--batch-size", "4", "--seed", "7",
            "--folds", "0,2",
        ]
    )  # fmt: skip
    cfg = config_from_args(args).resolved()
    assert cfg.folds == [0, 2] and cfg.patch == 64 and cfg.resume and cfg.width == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "glas"}, "`--data-dir` is required"),
        ({"dataset": "nope"}, "`dataset` must be one of"),
        ({"pairs": "some"}, "`pairs` must be one of"),
        ({"protocol": "authors"}, "MM-WHS only"),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
        ({"models": ("baseline", "other")}, "`models` must be among"),
    ],
)
def test_bad_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs).resolved()


def test_main_reports_configuration_errors(capsys):
    assert main(["reproduce", "--dataset", "glas"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_write_synthetic_command(tmp_path, capsys):
    assert main(["write-synthetic", "glas", str(tmp_path / "g")]) == 0
    assert len(load_glas(tmp_path / "g")["testB"]) == 8


# --------------------------------------------------------------------------------------------------
# one-line errors, exit status 2, before any training


TINY = [
    "--batch-size",
    "4",
    "--samples-per-epoch",
    "8",
    "--patch",
    "32",
    "--width",
    "0.0625",
    "--no-progress",
]


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--epochs", "-1", "argument --epochs: must be an integer >= 1, got '-1'"),
        ("--epochs", "0", "argument --epochs: must be an integer >= 1, got '0'"),
        ("--epochs", "abc", "argument --epochs: must be an integer >= 1, got 'abc'"),
        ("--batch-size", "0", "argument --batch-size: must be an integer >= 1"),
        ("--lr", "nan", "argument --lr: must be a finite number > 0"),
        ("--lr", "0", "argument --lr: must be a finite number > 0"),
        ("--width", "-0.5", "argument --width: must be a finite number > 0"),
        ("--margin", "inf", "argument --margin: must be a finite number >= 0"),
        ("--samples-per-epoch", "0", "argument --samples-per-epoch: must be an integer >= 1"),
        ("--seed", "-3", "argument --seed: must be an integer >= 0"),
        ("--seeds", "0,x", "argument --seeds: must be a comma list of integers >= 0"),
        ("--seeds", "1,1", "argument --seeds: lists a value twice"),
        ("--threads", "-1", "argument --threads: must be an integer >= 0"),
        ("--dataset", "nope", "argument --dataset: invalid choice: 'nope'"),
    ],
)
def test_invalid_numbers_stop_before_training(tmp_path, capsys, option, value, message):
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["reproduce", option, value, "--out", str(out)], message)
    assert err.startswith("python -m reference_models reproduce: error: ") and err.endswith("--help)\n")
    assert not out.exists()


def test_the_documented_study_defaults_to_three_seeds():
    args = build_parser().parse_args(["study", "weight"])
    assert args.seeds == [0, 1, 2] and args.threads == 2


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "`--device` must be auto, cpu, cuda, cuda:N or mps, got 'bogus'."),
        ("cuda:x", "`--device` must be auto, cpu, cuda, cuda:N or mps, got 'cuda:x'."),
        ("cuda", "`--device cuda`: no CUDA device is available"),
        ("cuda:7", "no CUDA device is available"),
        ("mps", "`--device mps`: MPS (Apple GPUs) is not available"),
    ],
)
def test_devices_this_pytorch_cannot_use(tmp_path, capsys, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and ":" not in device:
        pytest.skip("this machine has CUDA")
    if device == "cuda:7" and torch.cuda.is_available():
        message = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    out = tmp_path / "out"
    _one_line_error(capsys, ["reproduce", "--device", device, "--out", str(out)], message)
    assert not out.exists()


def test_keras_takes_no_torch_device(tmp_path, capsys):
    _one_line_error(
        capsys, ["reproduce", "--framework", "keras", "--device", "cuda:1", "--out", str(tmp_path / "o")],
        "`--device` 'cuda:1' applies to the PyTorch trainer",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_glas(tmp_path_factory):
    from reference_models.data.synthetic import write_synthetic_glas

    shape = {"n_train": 4, "n_test_a": 2, "n_test_b": 2, "height_range": (36, 48), "width_range": (40, 56)}
    return write_synthetic_glas(tmp_path_factory.mktemp("glas") / "glas", **shape, seed=0)


def _checkpoint_bytes(kind: str) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    if kind == "other settings":
        torch.save({"model": {}, "optimizer": {}, "epoch": 1, "fingerprint": "0" * 16}, buffer)
    elif kind == "not a checkpoint":
        torch.save([1, 2, 3], buffer)
    else:
        torch.save({"model": {"w": torch.arange(1000.0)}, "epoch": 1}, buffer)
    data = buffer.getvalue()
    return {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 64}.get(kind, data)


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "not a checkpoint", "other settings"])
def test_resume_from_a_checkpoint_it_cannot_use(tmp_path, capsys, tiny_glas, kind):
    out = tmp_path / "out"
    path = out / "checkpoints" / "glas_baseline.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(_checkpoint_bytes(kind))
    argv = [
        "reproduce", "--dataset", "glas", "--data-dir", str(tiny_glas), "--models", "baseline",
        "--epochs", "1", "--device", "cpu", "--resume", "--out", str(out), *TINY,
    ]  # fmt: skip
    expected = "was written with other settings" if kind == "other settings" else "cannot be read"
    _one_line_error(capsys, argv, f"checkpoint {path} {expected}", "delete it", "drop --resume")
    assert not (out / "report.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["state.json", "weights"])
def test_keras_resume_from_a_checkpoint_it_cannot_use(tmp_path, capsys, tiny_glas, broken):
    from reference_models.cli import config_from_args

    out = tmp_path / "out"
    argv = [
        "reproduce", "--framework", "keras", "--dataset", "glas", "--data-dir", str(tiny_glas),
        "--models", "baseline", "--epochs", "1", "--resume", "--out", str(out), *TINY,
    ]  # fmt: skip
    folder = out / "checkpoints" / "glas_baseline_keras"
    folder.mkdir(parents=True)
    if broken == "state.json":
        (folder / "state.json").write_text("{not json")
        bad = folder / "state.json"
    else:
        cfg = config_from_args(build_parser().parse_args(argv)).resolved()
        state = {"epoch": 1, "fingerprint": cfg.fingerprint("baseline", "glas"), "weights": "m.weights.h5"}
        (folder / "state.json").write_text(json.dumps(state))
        bad = folder / "m.weights.h5"
        bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # an HDF5 signature, then nothing
    _one_line_error(capsys, argv, f"checkpoint {bad} cannot be read", "delete it", "drop --resume")
