"""Dataset readers on files in the real on-disk formats, including every quirk and every bad-data error."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from reference_models.data import DataError, UnknownLabelWarning
from reference_models.data.glas import load_glas, read_grade_csv
from reference_models.data.mmwhs import (
    HU_RANGE,
    find_volumes,
    folds_in_order,
    load_mmwhs,
    load_volume,
    map_labels,
    normalize_hu,
)
from reference_models.data.synthetic import (
    GRADE_HEADER,
    make_mmwhs_volume,
    write_synthetic_glas,
    write_synthetic_mmwhs,
)

# --------------------------------------------------------------------------------------------------
# GlaS


def _write_glas_pair(directory, stem, rgb, anno):
    Image.fromarray(rgb).save(directory / f"{stem}.bmp")
    Image.fromarray(anno).save(directory / f"{stem}_anno.bmp")


def _tiny_glas(directory, rng, sizes=((20, 30), (24, 18))):
    written = {}
    for split in ("train", "testA", "testB"):
        for number, (h, w) in enumerate(sizes, start=1):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            anno = np.zeros((h, w), np.uint8)
            anno[2:8, 3:9] = 1
            anno[10:14, 4:7] = 7  # instance ids are arbitrary integers
            _write_glas_pair(directory, f"{split}_{number}", rgb, anno)
            written[f"{split}_{number}"] = (rgb, anno)
    return written


def test_glas_reads_back_exactly_what_was_written(tmp_path):
    written = _tiny_glas(tmp_path, np.random.default_rng(0))
    data = load_glas(tmp_path)
    assert [g.name for g in data["train"]] == ["train_1", "train_2"]
    for items in data.values():
        for g in items:
            rgb, anno = written[g.name]
            np.testing.assert_array_equal(g.image, rgb)
            np.testing.assert_array_equal(g.instances, anno)
            np.testing.assert_array_equal(g.mask, anno > 0)
            assert g.grade is None  # no Grade.csv in this folder


def test_glas_orders_images_numerically(tmp_path):
    rng = np.random.default_rng(1)
    for number in (10, 2, 1):
        for split in ("train", "testA", "testB"):
            _write_glas_pair(
                tmp_path, f"{split}_{number}", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                np.zeros((4, 4), np.uint8),
            )  # fmt: skip
    assert [g.name for g in load_glas(tmp_path)["testB"]] == ["testB_1", "testB_2", "testB_10"]


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_grade_csv_line_endings_and_leading_spaces(tmp_path, newline, bom):
    rows = [GRADE_HEADER, "testA_1, 1, benign, healthy", "testB_2, 14, malignant, adenomatous"]
    (tmp_path / "Grade.csv").write_bytes(bom + newline.join(rows).encode() + newline.encode())
    grades = read_grade_csv(tmp_path / "Grade.csv")
    assert grades == {
        "testA_1": {
            "patient ID": "1",
            "grade (GlaS)": "benign",
            "grade (Sirinukunwattana et al. 2015)": "healthy",
        },
        "testB_2": {
            "patient ID": "14",
            "grade (GlaS)": "malignant",
            "grade (Sirinukunwattana et al. 2015)": "adenomatous",
        },
    }


def test_grade_csv_bad_row_names_the_file(tmp_path):
    (tmp_path / "Grade.csv").write_text(GRADE_HEADER + "\rtrain_1, 1\r")
    with pytest.raises(DataError, match=r"Grade\.csv, row 2"):
        read_grade_csv(tmp_path / "Grade.csv")


def test_synthetic_glas_has_the_real_format_and_quirks(tmp_path):
    write_synthetic_glas(
        tmp_path, n_train=3, n_test_a=2, n_test_b=2, height_range=(40, 56), width_range=(48, 64), seed=3
    )
    raw = (tmp_path / "Grade.csv").read_bytes()
    assert raw.startswith(GRADE_HEADER.encode() + b"\r")
    assert b"\n" not in raw  # CR-only rows, as in some distributed copies
    assert b", benign" in raw or b", malignant" in raw  # values with a leading space
    with Image.open(tmp_path / "train_1_anno.bmp") as anno, Image.open(tmp_path / "train_1.bmp") as rgb:
        assert (anno.mode, rgb.mode) == ("L", "RGB")  # 8-bit annotation, RGB image
    data = load_glas(tmp_path)
    assert {k: len(v) for k, v in data.items()} == {"train": 3, "testA": 2, "testB": 2}
    shapes = {g.image.shape for items in data.values() for g in items}
    assert len(shapes) > 1  # sizes vary
    for items in data.values():
        for g in items:
            assert 40 <= g.image.shape[0] <= 56 and 48 <= g.image.shape[1] <= 64
            assert g.grade in ("benign", "malignant")
            assert g.mask.any() and not g.mask.all()
            # the instance ids are consecutive gland numbers
            ids = np.unique(g.instances[g.instances > 0])
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))


def test_synthetic_glas_is_reproducible(tmp_path):
    kwargs = {"n_train": 1, "n_test_a": 1, "n_test_b": 1, "height_range": (32, 40), "width_range": (32, 40)}
    a = load_glas(write_synthetic_glas(tmp_path / "a", seed=5, **kwargs))
    b = load_glas(write_synthetic_glas(tmp_path / "b", seed=5, **kwargs))
    np.testing.assert_array_equal(a["testB"][0].image, b["testB"][0].image)


def test_glas_missing_annotation_names_the_image(tmp_path):
    _tiny_glas(tmp_path, np.random.default_rng(0))
    (tmp_path / "testA_2_anno.bmp").unlink()
    with pytest.raises(DataError, match=r"testA_2\.bmp has no annotation testA_2_anno\.bmp"):
        load_glas(tmp_path)


def test_glas_annotation_without_image_names_the_file(tmp_path):
    _tiny_glas(tmp_path, np.random.default_rng(0))
    (tmp_path / "train_1.bmp").unlink()
    with pytest.raises(DataError, match=r"train_1_anno\.bmp has no image train_1\.bmp"):
        load_glas(tmp_path)


def test_glas_unreadable_file_names_it(tmp_path):
    _tiny_glas(tmp_path, np.random.default_rng(0))
    (tmp_path / "testB_1.bmp").write_bytes(b"this is not a bitmap")
    with pytest.raises(DataError, match=r"cannot read image .*testB_1\.bmp"):
        load_glas(tmp_path)


def test_glas_shape_mismatch_names_both_files(tmp_path):
    _tiny_glas(tmp_path, np.random.default_rng(0))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "train_2_anno.bmp")
    with pytest.raises(DataError, match=r"shape mismatch: image .*train_2\.bmp .* annotation .*train_2_anno"):
        load_glas(tmp_path)


def test_glas_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"no train_N\.bmp images"):
        load_glas(tmp_path)


# --------------------------------------------------------------------------------------------------
# MM-WHS


def _save_nifti(path, data, spacing):
    img = nib.Nifti1Image(np.asarray(data), np.diag([*spacing, 1.0]))
    img.header.set_zooms(spacing)
    nib.save(img, str(path))


def test_label_map_all_values():
    raw = np.array([0, 500, 600, 420, 421, 550, 205, 820, 850])
    np.testing.assert_array_equal(map_labels(raw), [0, 1, 2, 3, 3, 4, 5, 6, 7])


def test_unknown_labels_warn_with_count_and_become_background():
    raw = np.array([[500, 999, 999], [7, 205, 0]], dtype=np.int16)
    with pytest.warns(
        UnknownLabelWarning, match=re.escape("case.nii.gz: 3 voxels with unknown label values [7, 999]")
    ):
        out = map_labels(raw, source="case.nii.gz")
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 5, 0]])


def test_float_labels_are_rounded():
    np.testing.assert_array_equal(map_labels(np.array([499.9999, 205.0001])), [1, 5])


def test_hu_normalisation_is_documented_window():
    low, high = HU_RANGE
    out = normalize_hu(np.array([-1000.0, low, (low + high) / 2, high, 3000.0]))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1])


def test_mmwhs_nested_folder_spacing_and_resampling(tmp_path):
    nested = tmp_path / "MM-WHS" / "ct_train"
    nested.mkdir(parents=True)
    hu = np.arange(4 * 6 * 3, dtype=np.int16).reshape(4, 6, 3) * 10 - 300
    label = np.zeros((4, 6, 3), np.int16)
    label[1:3, 2:4, :] = 421
    _save_nifti(nested / "ct_train_1001_image.nii.gz", hu, (1.0, 1.0, 2.0))
    _save_nifti(nested / "ct_train_1001_label.nii.gz", label, (1.0, 1.0, 2.0))
    (volume,) = load_mmwhs(tmp_path, target_spacing=(1.0, 1.0, 1.0))
    assert volume.case == "ct_train_1001"
    assert volume.original_spacing == (1.0, 1.0, 2.0)
    assert volume.original_shape == (4, 6, 3)
    assert volume.image.shape == volume.label.shape == (4, 6, 6)  # z resampled from 2 mm to 1 mm
    assert set(np.unique(volume.label)) == {0, 3}  # 421 is the left atrium
    # nearest-neighbour labels: every z slice pair repeats the original slice
    np.testing.assert_array_equal(volume.label[:, :, ::2], map_labels(label))
    # no resampling needed: the normalised image is exactly the clipped, scaled HU
    (same,) = load_mmwhs(tmp_path, target_spacing=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(same.image, normalize_hu(hu), atol=1e-6)


def test_synthetic_mmwhs_format(tmp_path):
    write_synthetic_mmwhs(tmp_path, n_volumes=3, shape=(48, 48, 32), spacing=(2.2, 2.2, 3.4), seed=1)
    files = sorted(p.name for p in (tmp_path / "ct_train").iterdir())
    assert files[:2] == ["ct_train_1001_image.nii.gz", "ct_train_1001_label.nii.gz"]
    img = nib.load(str(tmp_path / "ct_train" / "ct_train_1001_image.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), (2.2, 2.2, 3.4), rtol=1e-6)
    hu = np.asarray(img.dataobj)
    assert hu.dtype == np.int16 and hu.min() < -500 and hu.max() > 200  # lungs and contrast blood
    raw = np.asarray(nib.load(str(tmp_path / "ct_train" / "ct_train_1003_label.nii.gz")).dataobj)
    assert 421 in raw and 420 not in raw  # the third case uses 421 for the left atrium
    values = {int(v) for v in np.unique(raw)}
    assert values <= {0, 500, 600, 421, 550, 205, 820, 850}
    volumes = load_mmwhs(tmp_path, target_spacing=(2.0, 2.0, 2.0))
    assert [v.case for v in volumes] == ["ct_train_1001", "ct_train_1002", "ct_train_1003"]
    assert volumes[0].image.shape == (53, 53, 54)
    for v in volumes:
        assert set(np.unique(v.label)) == set(range(8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_mmwhs_is_not_atlas_lookup(seed):
    """The heart moves across the field of view, and unlabelled tissue shares the left heart's contrast."""
    rng = np.random.default_rng(seed)
    spacing = np.array([6.0, 6.0, 8.0])  # a coarse grid over the default 168 x 168 x 176 mm field of view
    centres, look_alikes, lv_voxels = [], 0, 0
    for _ in range(6):
        hu, label = make_mmwhs_volume(rng, (28, 28, 22), tuple(spacing))
        assert {int(v) for v in np.unique(label)} == {0, 205, 420, 500, 550, 600, 820, 850}
        lv = label == 500
        centres.append(np.argwhere(lv).mean(0) * spacing)
        low, high = np.percentile(hu[lv], [10, 90])
        # unlabelled voxels in the LV's intensity range: descending aorta, cancellous bone, lung vessels
        look_alikes += int(((label == 0) & (hu >= low) & (hu <= high)).sum())
        lv_voxels += int(lv.sum())
    assert look_alikes >= 0.25 * lv_voxels  # the first generator had none
    assert np.std(centres, axis=0).mean() > 7.0  # mm; the first generator moved the heart by about 3 mm


def test_mmwhs_missing_label_names_the_image(tmp_path):
    write_synthetic_mmwhs(tmp_path, n_volumes=2, shape=(8, 8, 8), seed=0)
    (tmp_path / "ct_train" / "ct_train_1002_label.nii.gz").unlink()
    with pytest.raises(DataError, match=r"ct_train_1002_image\.nii\.gz has no label"):
        find_volumes(tmp_path)


def test_mmwhs_label_without_image_names_the_label(tmp_path):
    write_synthetic_mmwhs(tmp_path, n_volumes=2, shape=(8, 8, 8), seed=0)
    (tmp_path / "ct_train" / "ct_train_1001_image.nii.gz").unlink()
    with pytest.raises(DataError, match=r"ct_train_1001_label\.nii\.gz has no image"):
        find_volumes(tmp_path)


def test_mmwhs_label_in_another_folder_is_found(tmp_path):
    write_synthetic_mmwhs(tmp_path, n_volumes=1, shape=(8, 8, 8), nested=False, seed=0)
    (tmp_path / "labels").mkdir()
    (tmp_path / "ct_train_1001_label.nii.gz").rename(tmp_path / "labels" / "ct_train_1001_label.nii.gz")
    ((_case, image, label),) = find_volumes(tmp_path)
    assert label.parent.name == "labels" and image.parent == tmp_path


@pytest.mark.parametrize("content", [b"", b"not gzip at all", gzip.compress(b"\x00" * 40)])
def test_mmwhs_unreadable_file_names_it(tmp_path, content):
    write_synthetic_mmwhs(tmp_path, n_volumes=1, shape=(8, 8, 8), seed=0)
    bad = tmp_path / "ct_train" / "ct_train_1001_label.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=r"cannot read NIfTI file .*ct_train_1001_label\.nii\.gz"):
        load_mmwhs(tmp_path)


def test_mmwhs_shape_mismatch_names_both_files(tmp_path):
    _save_nifti(tmp_path / "ct_train_1001_image.nii.gz", np.zeros((4, 4, 4), np.int16), (1, 1, 1))
    _save_nifti(tmp_path / "ct_train_1001_label.nii.gz", np.zeros((4, 4, 5), np.int16), (1, 1, 1))
    with pytest.raises(
        DataError, match=r"shape mismatch: image .*1001_image.* \(4, 4, 4\) but label .*1001_label"
    ):
        load_mmwhs(tmp_path)


def test_mmwhs_unknown_label_warning_names_the_file(tmp_path):
    label = np.zeros((4, 4, 4), np.int16)
    label[0, 0, :2] = 123
    _save_nifti(tmp_path / "ct_train_1001_image.nii.gz", np.zeros((4, 4, 4), np.int16), (1, 1, 1))
    _save_nifti(tmp_path / "ct_train_1001_label.nii.gz", label, (1, 1, 1))
    entry = find_volumes(tmp_path)[0]
    with pytest.warns(UnknownLabelWarning, match=r"ct_train_1001_label\.nii\.gz: 2 voxels .*\[123\]"):
        volume = load_volume(*entry, (1.0, 1.0, 1.0))
    assert not volume.label.any()


def test_mmwhs_no_volumes(tmp_path):
    with pytest.raises(DataError, match=re.escape("no `*_image.nii.gz` volumes")):
        find_volumes(tmp_path)


def test_folds_in_order():
    folds = folds_in_order(20)
    assert folds == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    with pytest.raises(DataError, match="needs >= 8 volumes"):
        folds_in_order(5)
