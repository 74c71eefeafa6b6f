"""`evaluate --regions`: BraTS-style overlapping regions (whole tumour, tumour core, enhancing tumour) on a
synthetic BraTS-like set, against a brute-force Dice of each region after referral; one uncertainty map per
region or one shared map; the region names in every report; `--workers` and `--shard`/`merge`; the
errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selectivekit.cli import main
from selectivekit.io import parse_regions, region_images
from tests.conftest import read_report, run_cli

REGIONS = "WT=1,2,3;TC=2,3;ET=3"
LABELS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
SIZE = 10


def brats_like(n: int, seed: int = 0):
    """Nested spheres as nnU-Net numbers BraTS: 1 oedema, 2 necrosis, 3 enhancing tumour (WT = 1, 2, 3, TC =
    2, 3, ET = 3), predicted from noisy distances; the uncertainty is high near each predicted boundary,
    one map per region (R, X, Y, Z) and their maximum as a shared map. Case 0 has no enhancing tumour in
    its truth nor its prediction."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE]
    radii = (4.2, 2.8, 1.6)
    preds, labels, shared, per_region = [], [], [], []
    for i in range(n):
        c = rng.uniform(3.5, 6.5, 3)
        d = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        noisy = d + rng.normal(0, 0.5, d.shape)
        label, pred = np.zeros(d.shape, np.uint8), np.zeros(d.shape, np.uint8)
        for k, r in enumerate(radii[: 2 if i == 0 else 3], start=1):
            label[d < r] = k
            pred[noisy < r] = k
        u = np.stack([1 / (1 + np.abs(noisy - r)) for r in radii]).astype(np.float32)
        preds.append(pred)
        labels.append(label)
        per_region.append(u)
        shared.append(u.max(axis=0))
    return preds, labels, shared, per_region


def write(root, preds, labels, us, *, unc="unc"):
    folders = {"pred": root / "pred", "label": root / "label", "uncertainty": root / unc}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i, arrays in enumerate(zip(preds, labels, us, strict=True)):
        for folder, array in zip(folders.values(), arrays, strict=True):
            np.save(folder / f"case_{i}.npy", array)
    return folders


def argv(folders, out, *extra, regions=REGIONS):
    flags = [f"--{role}" for role in folders]
    inputs = [
        item for flag, folder in zip(flags, folders.values(), strict=True) for item in (flag, str(folder))
    ]
    return ["evaluate", *inputs, "--regions", str(regions), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    preds, labels, shared, per_region = brats_like(6)
    return {
        "root": root,
        "arrays": (preds, labels, shared, per_region),
        "shared": write(root, preds, labels, shared),
        "per_region": write(root, preds, labels, per_region, unc="unc4"),
    }


def brute_force_dice(pred, label, u, threshold):
    """Each region's Dice after referral at ``threshold``: ``u`` is (R, *S); referred pairs take the truth."""
    dice = []
    for r, labels in enumerate(LABELS.values()):
        p, t = np.isin(pred, labels), np.isin(label, labels)
        p = np.where(u[r] <= threshold, p, t)
        den = p.sum() + t.sum()
        dice.append(1.0 if den == 0 else 2 * (p & t).sum() / den)
    return dice


def test_regions_are_scored_as_a_brute_force_dice_of_each_region(data, capsys):
    preds, labels, _, per_region = data["arrays"]
    out = data["root"] / "out-per-region"
    assert main(argv(data["per_region"], out)) == 0
    report = read_report(out)
    assert report["settings"]["regions"] == {name: list(v) for name, v in LABELS.items()}
    assert report["settings"]["num_classes"] == 4 and report["settings"]["label_classes"] == 4
    assert [(row["region"], tuple(row["labels"])) for row in report["per_class"]] == list(LABELS.items())
    assert report["n_voxels"] == 3 * 6 * SIZE**3  # (region, voxel) pairs
    thresholds = [np.inf] + [row["threshold"] for row in report["coverages"]]
    for i, row in enumerate(report["per_image"]):
        at = [(row["dice_full"], row["dice_full_per_class"])]
        at += [(c["dice"], c["dice_per_class"]) for c in row["coverages"]]
        for (dice, per_class), threshold in zip(at, thresholds, strict=True):
            want = brute_force_dice(preds[i], labels[i], per_region[i], threshold)
            np.testing.assert_allclose(per_class, want, rtol=1e-12)
            assert dice == pytest.approx(np.mean(want), rel=1e-12)
    assert report["per_image"][0]["dice_full_per_class"][2] == 1.0  # no ET in truth or prediction
    everything = np.concatenate([u.reshape(-1) for u in per_region])
    for row in report["coverages"]:
        assert row["coverage"] == pytest.approx(np.mean(everything <= row["threshold"]), rel=1e-12)
    # the library's own functions on the region images give the same AURC
    from selectivekit import aurc_dice

    images = [region_images(p, t, u, LABELS) for p, t, u in zip(preds, labels, per_region, strict=True)]
    want = aurc_dice(*([im[k] for im in images] for k in range(3)), num_classes=4)
    assert report["aurc_dice"] == pytest.approx(float(want), rel=1e-12)
    markdown = (out / "report.md").read_text()
    assert "## Dice per region" in markdown and "| ET |" in markdown
    assert "regions evaluated (overlapping, each a binary structure): WT (labels 1, 2, 3)" in markdown
    html = (out / "report.html").read_text()
    assert ">TC</td>" in html and "Dice per region" in html


def test_one_shared_map_is_every_region_s_map(data):
    preds, labels, shared, _ = data["arrays"]
    root = data["root"]
    assert main(argv(data["shared"], root / "out-shared")) == 0
    repeated = write(root / "repeated", preds, labels, [np.stack([u] * 3) for u in shared])
    assert main(argv(repeated, root / "out-repeated")) == 0
    a, b = read_report(root / "out-shared"), read_report(root / "out-repeated")
    for key in ("aurc_dice", "coverages", "per_class", "per_image"):
        assert a[key] == b[key]


@pytest.mark.parametrize("form", ["last-axis", "dataset.json", "json"])
def test_layouts_and_region_files_give_the_same_numbers(data, form):
    preds, labels, _, per_region = data["arrays"]
    root = data["root"] / form
    folders, regions = data["per_region"], REGIONS
    if form == "last-axis":  # (X, Y, Z, R), as a 4D NIfTI stores it
        folders = write(root, preds, labels, [np.moveaxis(u, 0, -1) for u in per_region])
    elif form == "dataset.json":  # nnU-Net's region configuration, its names
        regions = root / "dataset.json"
        root.mkdir()
        labels_json = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
        regions.write_text(json.dumps({"labels": labels_json, "regions_class_order": [1, 2, 3]}))
    else:
        regions = root / "regions.json"
        root.mkdir()
        regions.write_text(json.dumps({name: list(v) for name, v in LABELS.items()}))
    assert main(argv(folders, root / "out", regions=regions)) == 0
    reference, report = read_report(data["root"] / "out-per-region"), read_report(root / "out")
    for key in ("aurc_dice", "coverages", "per_image"):
        assert report[key] == reference[key]
    names = [row["region"] for row in report["per_class"]]
    assert names == (
        ["whole tumor", "tumor core", "enhancing tumor"] if form == "dataset.json" else list(LABELS)
    )


def test_workers_and_shards_give_the_one_process_report(data):
    root = data["root"] / "parallel"
    folders = data["per_region"]
    assert main(argv(folders, root / "one")) == 0
    assert main(argv(folders, root / "workers", "--workers", "2")) == 0
    states = []
    for i in (0, 1):
        state = root / f"state-{i}.npz"
        assert main([*argv(folders, root / "unused", "--shard", f"{i}/2"), "--save-state", str(state)]) == 0
        states.append(str(state))
    assert main(["merge", *states, "--out", str(root / "merged")]) == 0
    one = (root / "one" / "report.json").read_text()
    assert (root / "workers" / "report.json").read_text() == one
    assert (root / "merged" / "report.json").read_text() == one
    assert "## Dice per region" in (root / "merged" / "report.md").read_text()


def test_a_map_per_region_must_have_one_map_per_region(data):
    code, err = run_cli(argv(data["per_region"], data["root"] / "bad", regions="WT=1,2,3;TC=2,3"))
    assert code == 1
    assert err.count("\n") == 1
    assert "holds 3 maps along axis 0, but `--regions` lists 2 regions" in err
    folders = data["per_region"]
    code, err = run_cli(
        ["evaluate", "--pred", str(folders["pred"]), "--label", str(folders["label"]), "--uncertainty",
         str(folders["uncertainty"]), "--num-classes", "4", "--out", str(data["root"] / "bad3"), "--quiet"]
    )  # fmt: skip
    assert code == 1 and "(one uncertainty map per region needs `--regions`)" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--include-background"], "`--regions` does not go with `--include-background`"),
        (["--num-classes", "3"], "`--regions` lists label 3, outside the labels 0..2 of `--num-classes` 3"),
        (["--regions", "WT=0,1"], "region 'WT' lists label 0 (the background)"),
        (["--regions", "WT=1;WT=2"], "names the region 'WT' twice"),
        (["--regions", "WT:1"], "is neither a file nor regions like 'WT=1,2,3;TC=1,3;ET=3'"),
    ],
)
def test_usage_errors(data, extra, message):
    code, err = run_cli([*argv(data["shared"], data["root"] / "usage"), *extra])
    assert code == 2 and message in err and err.count("\n") == 1


def test_probabilities_are_refused_with_regions(data):
    folders = data["shared"]
    code, err = run_cli(
        ["evaluate", "--label", str(folders["label"]), "--probs", str(folders["uncertainty"]), "--regions",
         REGIONS, "--out", str(data["root"] / "probs"), "--quiet"]
    )  # fmt: skip
    assert code == 2 and "`--regions` does not go with `--probs`" in err


def test_a_threshold_applies_to_the_regions_it_was_calibrated_on(data):
    pytest.importorskip("scipy")
    root, folders = data["root"], data["per_region"]
    threshold = root / "threshold.json"
    calibrate = [
        "calibrate",
        *argv(folders, root / "x")[1:-3],
        "--quiet",
        "--max-dice-loss",
        "0.2",
        "--out",
        str(threshold),
    ]
    assert main(calibrate) == 0
    assert json.loads(threshold.read_text())["settings"]["regions"]["ET"] == [3]
    extra = ["--threshold", str(threshold), "--ci", "0.9", "--n-resamples", "20", "--case-score", "mean"]
    assert main(argv(folders, root / "at-threshold", *extra)) == 0
    report = read_report(root / "at-threshold")
    assert {"fixed_threshold", "intervals", "cases"} <= set(report)
    code, err = run_cli(
        argv(folders, root / "other", "--threshold", str(threshold), regions="A=1,2,3;B=2,3;C=3")
    )
    assert code == 2 and "`--threshold` was calibrated with regions=" in err
    code, err = run_cli(
        argv(folders, root / "other", "--threshold", str(threshold), regions="TC=2,3;WT=1,2,3;ET=3")
    )
    assert code == 2 and "`--threshold` was calibrated with regions=" in err  # the order of the maps counts


def test_compare_needs_the_same_regions(data, capsys):
    root = data["root"]
    names = root / "names.json"
    names.write_text(json.dumps({"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}))
    assert main(argv(data["per_region"], root / "named")) == 0
    assert main(argv(data["per_region"], root / "renamed", regions=names)) == 0
    code, err = run_cli(["compare", str(root / "named"), str(root / "renamed"), "--out", str(root / "c")])
    assert code == 1 and "RUN_A and RUN_B must use the same `--regions`" in err


def test_parse_regions_forms_and_errors(tmp_path):
    assert parse_regions(" WT = 1, 2,3 ;TC=3,1; ; ET=3") == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    nnunet = {"background": 0, "whole tumor": [1, 2, 3], "enhancing tumor": 3, "ignore": 4}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": nnunet, "regions_class_order": [1, 3]}))
    assert (
        parse_regions(path) == parse_regions(str(path)) == {"whole tumor": (1, 2, 3), "enhancing tumor": (3,)}
    )
    assert parse_regions({"background": 0, "A": 2}) == {"A": (2,)}
    for bad, message in [
        ("", "neither a file nor regions"),
        ("A=", "must look like 'WT=1,2,3"),
        ("A=1;=2", "must look like"),
        ({"A": []}, "lists no label"),
        ({"A": [1.5]}, "integer labels"),
        ({"A": [70000]}, "labels must be in [1, 65535]"),
        ({}, "at least one region"),
        (tmp_path / "missing.json", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
            parse_regions(bad)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        parse_regions(path)


def test_region_images():
    pred = np.array([[0, 1, 3, 3]])
    label = np.array([[0, 1, 2, 3]])
    p, t, u = region_images(pred, label, np.arange(4.0).reshape(1, 4), [(1, 2, 3), (3,)])
    assert p.dtype == t.dtype == np.uint8 and p.shape == t.shape == u.shape == (2, 1, 4)
    assert p[:, 0].tolist() == [[0, 1, 1, 1], [0, 0, 2, 2]]
    assert t[:, 0].tolist() == [[0, 1, 1, 1], [0, 0, 0, 2]]
    assert u[:, 0].tolist() == [[0, 1, 2, 3]] * 2
    with pytest.raises(ValueError, match=r"\(2, 1, 4\) \(one map per region, 2 regions\)"):
        region_images(pred, label, np.zeros((3, 1, 4)), [(1, 2, 3), (3,)])
