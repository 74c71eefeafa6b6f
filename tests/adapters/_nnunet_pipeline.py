"""nnU-Net v2 end to end with selectivekit's trainer, on a tiny synthetic 2D dataset (run by test_nnunet.py).

``python tests/adapters/_nnunet_pipeline.py ROOT`` with nnUNet_raw, nnUNet_preprocessed and nnUNet_results
set to folders under ROOT (nnU-Net reads them when it is first imported, hence a process of its own):

1. writes Dataset501_SelectiveToy in nnU-Net's raw format: 8 PNG images of 48 x 48 with a bright disk
   (label 1) and an ignore label (2) on a band of rows;
2. plans and preprocesses it (nnU-Net's API, 2d only);
3. finds ``nnUNetTrainerUncertaintyAware_1epoch`` by name as ``nnUNetv2_train`` does (through the module
   that ``selectivekit-nnunet install-trainer`` wrote), shrinks its epoch to 4 + 2 iterations and trains on
   the CPU with nnU-Net's ``run_training``;
4. prints one JSON line with what the test checks. Validation and prediction then run through nnU-Net's
   own command lines (``nnUNetv2_train --val``, ``nnUNetv2_predict``), from the test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID}_SelectiveToy"
TRAINER = "nnUNetTrainerUncertaintyAware_1epoch"
TERMS = ("seg_losses", "unc_losses")


def write_raw_dataset(raw: Path, n_train: int = 8, n_test: int = 2, size: int = 48) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_train + n_test):
        cy, cx = rng.integers(14, size - 14, size=2)
        r = rng.integers(6, 11)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = np.clip(60 + 120 * disk + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
        case = f"toy_{i:03d}"
        if i >= n_train:
            Image.fromarray(image).save(folder / "imagesTs" / f"{case}_0000.png")
            continue
        label = disk.astype(np.uint8)
        label[:4] = 2  # ignore label: the top rows are not annotated
        Image.fromarray(image).save(folder / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(label).save(folder / "labelsTr" / f"{case}.png")
    dataset_json = {
        "channel_names": {"0": "intensity"},
        "labels": {"background": 0, "disk": 1, "ignore": 2},
        "numTraining": n_train,
        "file_ending": ".png",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))


def main(root: Path) -> None:
    import torch

    write_raw_dataset(Path(os.environ["nnUNet_raw"]))

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    os.environ["nnUNet_n_proc_DA"] = "1"  # planning sets torch's threads to it (0 fails)
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
    plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], configurations=("2d",), num_processes=(1,))

    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in this process: no worker processes on a small CI machine

    trainer = get_trainer_from_args(str(DATASET_ID), "2d", 0, TRAINER, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = 4
    trainer.num_val_iterations_per_epoch = 2
    trainer.run_training()

    logged = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging
    log_text = Path(trainer.log_file).read_text()
    print(
        "RESULT "
        + json.dumps(
            {
                "trainer_module": type(trainer).__module__,
                "trainer_class": type(trainer).__name__,
                "num_epochs": trainer.num_epochs,
                "loss_class": type(trainer.loss).__name__,
                "ignore_index": trainer.loss.unc_loss.ignore_index,
                "scale_weights": trainer.loss.scale_weights,
                "logged": {k: [float(v) for v in logged[k]] for k in logged if k.endswith(TERMS)},
                "train_losses": [float(v) for v in logged["train_losses"]],
                "log_has_terms": "train_unc_loss" in log_text and "train_seg_loss" in log_text,
                "output_folder": trainer.output_folder,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
