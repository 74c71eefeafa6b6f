"""The dataset registry: every dataset is one spec, and the rest of the code asks the spec."""

from __future__ import annotations

import pytest

from reference_models.config import DATASETS, RunConfig
from reference_models.datasets import dataset_names, get_dataset

KEYS = {"lr", "epochs", "width", "patch", "samples_per_epoch", "spacing", "seg_loss"}


def test_registry_lists_every_dataset_with_complete_defaults():
    assert DATASETS == dataset_names() == ("synthetic-glas", "synthetic-mmwhs", "glas", "mmwhs")
    for name in DATASETS:
        spec = get_dataset(name)
        assert spec.name == name and set(spec.defaults) == KEYS and spec.dims in (2, 3)
        assert spec.synthetic == name.startswith("synthetic-")


def test_real_datasets_need_a_folder_and_synthetic_ones_do_not():
    for name in DATASETS:
        cfg = RunConfig(dataset=name)
        if get_dataset(name).synthetic:
            assert cfg.resolved().epochs == get_dataset(name).defaults["epochs"]
        else:
            with pytest.raises(ValueError, match="`--data-dir` is required"):
                cfg.resolved()


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"`dataset` must be one of .*synthetic-glas"):
        get_dataset("brats")


def test_study_options_follow_the_spec():
    assert RunConfig(dataset="synthetic-mmwhs", slices=True).resolved().is_3d is False
    assert RunConfig(dataset="synthetic-mmwhs").resolved().is_3d is True
    with pytest.raises(ValueError, match="`--slices`"):
        RunConfig(dataset="synthetic-glas", slices=True).resolved()
    with pytest.raises(ValueError, match="MM-WHS only"):
        RunConfig(dataset="synthetic-glas", protocol="authors").resolved()


@pytest.mark.parametrize(
    ("dataset", "protocol", "expected"),
    [("synthetic-mmwhs", "default", 2 / 3), ("mmwhs", "default", 1 / 3), ("mmwhs", "authors", 0.0)],
)
def test_mmwhs_share_of_foreground_patches(tmp_path, dataset, protocol, expected):
    from reference_models.data.synthetic import write_synthetic_mmwhs
    from reference_models.datasets.mmwhs import build_mmwhs_task

    write_synthetic_mmwhs(tmp_path, n_volumes=8, shape=(8, 8, 8), spacing=(8.0, 8.0, 8.0), seed=0)
    cfg = RunConfig(dataset=dataset, data_dir=str(tmp_path), protocol=protocol, folds=[0], patch=16)
    task = build_mmwhs_task(cfg.resolved(), tmp_path)
    assert task.foreground_fraction == pytest.approx(expected)
