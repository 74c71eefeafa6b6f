"""Command-line parsing and configuration errors (no training here)."""

from __future__ import annotations

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
