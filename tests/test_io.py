"""Tests for selectivekit.io: readers, pairing by case name, label maps and the per-case checks."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from selectivekit import io as skio
from selectivekit import max_softmax_uncertainty, uncertainty_from_logits
from tests.conftest import evaluate_argv, run_cli


def _nifti(path: Path, array: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)
    return path


def _touch_npy(path: Path, array: np.ndarray | None = None) -> Path:
    np.save(path, np.zeros((2, 2), np.float32) if array is None else array)
    return path


# --------------------------------------------------------------------------------------------------
# readers


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(".nii", np.int16), (".nii.gz", np.float32), (".npy", np.float64), (".npz", np.uint8)],
)
def test_read_image_array_formats_round_trip(tmp_path, suffix, dtype):
    array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    path = tmp_path / f"a{suffix}"
    if suffix.startswith(".nii"):
        _nifti(path, array)
    elif suffix == ".npy":
        np.save(path, array)
    else:
        np.savez(path, array)
    out = skio.read_image(path)
    np.testing.assert_array_equal(out, array)
    assert out.shape == (2, 3, 4)


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "L"), (".bmp", "L"), (".tif", "F"), (".tiff", "I;16")])
def test_read_image_pillow_formats(tmp_path, suffix, mode):
    array = {"L": np.uint8, "F": np.float32, "I;16": np.uint16}[mode]
    data = (np.arange(12).reshape(3, 4) * 7).astype(array)
    path = tmp_path / f"a{suffix}"
    image = Image.fromarray(data)
    assert image.mode == mode
    image.save(path)
    np.testing.assert_array_equal(skio.read_image(path), data)


def test_read_image_palette_png_gives_indices(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(skio.read_image(tmp_path / "p.png"), [[0, 1], [2, 1]])


def test_read_image_multipage_tiff_is_a_stack(tmp_path):
    pages = [Image.fromarray(np.full((3, 4), k, np.float32)) for k in range(5)]
    pages[0].save(tmp_path / "s.tif", save_all=True, append_images=pages[1:])
    stack = skio.read_image(tmp_path / "s.tif")
    assert stack.shape == (5, 3, 4)
    np.testing.assert_array_equal(stack[:, 0, 0], np.arange(5))


def test_read_image_npz_picks_the_array_by_kind(tmp_path):
    np.savez(tmp_path / "c.npz", probabilities=np.ones((2, 3)), other=np.zeros(1))
    assert skio.read_image(tmp_path / "c.npz", kind="probs").shape == (2, 3)
    with pytest.raises(ValueError, match=r"several arrays \(probabilities, other\)"):
        skio.read_image(tmp_path / "c.npz", kind="label")


def test_read_image_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must end with one of"):
        skio.read_image(tmp_path / "a.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read 'broken.png' as .png"):
        skio.read_image(tmp_path / "broken.png")
    (tmp_path / "broken.nii.gz").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"cannot read 'broken.nii.gz' as .nii.gz"):
        skio.read_image(tmp_path / "broken.nii.gz")


# --------------------------------------------------------------------------------------------------
# case names and pairing


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("case_1.nii.gz", "case_1"),
        ("case_1_pred.nii.gz", "case_1"),
        ("case_1_label.nii", "case_1"),
        ("case_1_seg.png", "case_1"),
        ("case_1_GT.tif", "case_1"),
        ("case_1_unc.npy", "case_1"),
        ("case_1_uncertainty.npz", "case_1"),
        ("case_1_probs.npz", "case_1"),
        ("case_1_prob.npy", "case_1"),
        ("case_1_pred_seg.png", "case_1_pred"),  # one suffix only
        ("case.v2_pred.nii.gz", "case.v2"),  # dots inside the name are kept
        ("_pred.png", "_pred"),  # a suffix is never the whole name
        ("img_0000.nii.gz", "img_0000"),  # the _0000 rule is per folder
    ],
)
def test_case_name(filename, expected):
    assert skio.case_name(filename) == expected


def test_case_name_rejects_unknown_extension():
    with pytest.raises(ValueError, match=r"`filename` must end with one of .* got 'a.txt'"):
        skio.case_name("a.txt")


def test_pair_files_pairs_by_case_name_and_ignores_other_files(tmp_path):
    pred, label, unc = (tmp_path / d for d in ("pred", "label", "unc"))
    for d in (pred, label, unc):
        d.mkdir()
    for name in ("b", "a"):
        _touch_npy(pred / f"{name}_pred.npy")
        _touch_npy(label / f"{name}.npy")
        _touch_npy(unc / f"{name}_unc.npy")
    (pred / "plans.json").write_text("{}")
    (pred / ".hidden.npy").write_bytes(b"")
    cases = skio.pair_files({"pred": pred, "label": label, "uncertainty": unc})
    assert [c.name for c in cases] == ["a", "b"]
    assert cases[0].files == {
        "pred": pred / "a_pred.npy",
        "label": label / "a.npy",
        "uncertainty": unc / "a_unc.npy",
    }


def test_pair_files_nnunet_channel_suffix_is_removed_per_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for k in ("001", "002"):
        _touch_npy(a / f"case_{k}_0000.npy")
        _touch_npy(b / f"case_{k}.npy")
    assert [c.name for c in skio.pair_files({"a": a, "b": b})] == ["case_001", "case_002"]
    # a folder where only some names end with _0000 keeps them: here img_0000 is a case name
    c, d = tmp_path / "c", tmp_path / "d"
    c.mkdir()
    d.mkdir()
    for k in ("0000", "0001"):
        _touch_npy(c / f"img_{k}.npy")
        _touch_npy(d / f"img_{k}_gt.npy")
    assert [x.name for x in skio.pair_files({"c": c, "d": d})] == ["img_0000", "img_0001"]


def test_pair_files_lists_every_unmatched_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("x", "y", "only_a1", "only_a2"):
        _touch_npy(a / f"{name}.npy")
    for name in ("x", "y", "only_b"):
        _touch_npy(b / f"{name}_gt.npy")
    with pytest.raises(ValueError, match=r"files without a partner") as info:
        skio.pair_files({"pred": a, "label": b})
    message = str(info.value)
    assert "in `pred`: only_a1.npy, only_a2.npy" in message
    assert "in `label`: only_b_gt.npy" in message


@pytest.mark.parametrize(
    ("lacking", "hint"),
    [
        ({"pred": ["b"], "uncertainty": ["b"]}, True),  # a fold's predictions against the full labels
        ({"pred": ["a", "c"], "uncertainty": ["a", "c"]}, True),
        ({"uncertainty": ["c"]}, False),  # a map is missing: skipping labels would not help
        ({"label": ["a"]}, False),
        ({"pred": ["b"], "uncertainty": ["c"]}, False),
        ({"pred": ["a"], "label": ["b"], "uncertainty": ["c"]}, False),
    ],
)
def test_pair_files_says_which_folder_lacks_which_case(tmp_path, lacking, hint):
    folders = {role: tmp_path / role for role in ("pred", "label", "uncertainty")}
    suffix = {"pred": "_pred", "label": "", "uncertainty": "_unc"}
    for role, folder in folders.items():
        folder.mkdir()
        for case in ("a", "b", "c", "d"):
            if case not in lacking.get(role, []):
                _touch_npy(folder / f"{case}{suffix[role]}.npy")
    with pytest.raises(ValueError) as info:
        skio.pair_files(folders)
    message = str(info.value)
    # every folder that lacks a case is named with those cases, in the order of the roles; no other folder
    expected = [
        f"the `{role}` folder {str(folders[role])!r} lacks {', '.join(lacking[role])}"
        for role in folders
        if role in lacking
    ]
    assert "; ".join(expected) + "; files without a partner" in message
    for role in folders:
        assert (f"the `{role}` folder" in message) == (role in lacking)
    assert ('pass `partial_roles=("label",)`' in message) == hint
    assert "\n" not in message


def test_pair_files_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`pred` folder .* does not exist"):
        skio.pair_files({"pred": tmp_path / "missing"})
    _touch_npy(tmp_path / "f.npy")
    with pytest.raises(NotADirectoryError, match=r"`pred` must be a folder"):
        skio.pair_files({"pred": tmp_path / "f.npy"})
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"`label` folder .* has no file ending with"):
        skio.pair_files({"label": empty})
    dup = tmp_path / "dup"
    dup.mkdir()
    _touch_npy(dup / "c.npy")
    _touch_npy(dup / "c_pred.npy")
    with pytest.raises(
        ValueError, match=r"two files for case 'c': c.npy and c_pred.npy; keep one per case.$"
    ):
        skio.pair_files({"pred": dup})
    with pytest.raises(ValueError, match=r"also given for `label`: give each its own folder"):
        skio.pair_files({"pred": dup, "label": dup})


def test_pair_files_shared_nnunet_folder_splits_images_and_arrays(tmp_path):
    out, labels = tmp_path / "out", tmp_path / "labels"
    out.mkdir()
    labels.mkdir()
    for k in ("1", "2"):
        _nifti(out / f"c{k}.nii.gz", np.zeros((2, 2, 2), np.uint8))
        np.savez(out / f"c{k}.npz", probabilities=np.ones((2, 2, 2, 2)) / 2)
        (out / f"c{k}.pkl").write_bytes(b"")
        _nifti(labels / f"c{k}.nii.gz", np.zeros((2, 2, 2), np.uint8))
    cases = skio.pair_files({"pred": out, "label": labels, "probs": out}, array_roles=("probs",))
    assert [c.files["pred"].name for c in cases] == ["c1.nii.gz", "c2.nii.gz"]
    assert [c.files["probs"].name for c in cases] == ["c1.npz", "c2.npz"]


# --------------------------------------------------------------------------------------------------
# label maps


def test_parse_label_map():
    assert skio.parse_label_map("500:1,600:2, 205 : 3") == {500: 1, 600: 2, 205: 3}
    with pytest.raises(ValueError, match=r"entries must look like 500:1 .* got '600=2'"):
        skio.parse_label_map("500:1,600=2")
    with pytest.raises(ValueError, match=r"maps the value 500 twice"):
        skio.parse_label_map("500:1,500:2")
    with pytest.raises(ValueError, match=r"must be comma-separated pairs"):
        skio.parse_label_map(" , ")


# --------------------------------------------------------------------------------------------------
# load_case


def _case(tmp_path: Path, pred, label, unc, *, ext=".npy", unc_name="c_unc.npy") -> skio.Case:
    files = {}
    for role, array, name in (
        ("pred", pred, f"c_pred{ext}"),
        ("label", label, f"c_gt{ext}"),
        ("uncertainty", unc, unc_name),
    ):
        path = tmp_path / name
        if name.endswith(".npy"):
            np.save(path, array)
        elif name.endswith(".npz"):
            np.savez(path, probabilities=array)
        elif ".nii" in name:
            _nifti(path, array)
        else:
            Image.fromarray(array).save(path)
        files[role] = path
    return skio.Case("c", files)


def test_load_case_reads_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (4, 5)).astype(np.uint8)
    label = rng.integers(0, 3, (4, 5)).astype(np.uint8)
    unc = rng.random((4, 5))
    p, l, u = skio.load_case(_case(tmp_path, pred, label, unc), num_classes=3)
    np.testing.assert_array_equal(p, pred)
    np.testing.assert_array_equal(l, label)
    np.testing.assert_array_equal(u, unc)


def test_load_case_label_map_and_implicit_background(tmp_path):
    label = np.array([[0, 500], [600, 500]], np.int16)
    pred = np.array([[0, 600], [600, 0]], np.int16)
    case = _case(tmp_path, pred, label, np.zeros((2, 2)))
    p, l, _ = skio.load_case(case, num_classes=3, label_map={500: 1, 600: 2})
    np.testing.assert_array_equal(l, [[0, 1], [2, 1]])
    np.testing.assert_array_equal(p, [[0, 2], [2, 0]])
    with pytest.raises(ValueError, match=r"`label` file 'c_gt.npy' holds values outside `label_map`: 600"):
        skio.load_case(case, num_classes=3, label_map={500: 1})
    with pytest.raises(ValueError, match=r"classes must be in \[0, 2\) .* got 2"):
        skio.load_case(case, num_classes=2, label_map={500: 1, 600: 2})


@pytest.mark.parametrize(
    ("values", "num_classes", "suggestion"),
    [
        ([0, 1, 2], 2, "pass `num_classes` 3"),  # the background counted out: one class short
        ([0, 3, 1], 3, "pass `num_classes` 4"),
        ([0, 7, 5], 4, "pass `num_classes` 8"),
        ([0, 63], 2, "pass `num_classes` 64"),
        ([0, 255], 2, None),  # a 0/255 mask: a stored code, not 256 classes
        ([0, 500, 600], 3, None),
        ([-1, 0, 1], 2, None),
    ],
)
def test_too_small_num_classes_names_the_value_and_the_fix(tmp_path, values, num_classes, suggestion):
    label = np.array([values * 2], dtype=np.int32)
    ok = np.zeros_like(label, dtype=np.uint8)
    with pytest.raises(ValueError) as info:
        skio.load_case(_case(tmp_path, ok, label, np.zeros(label.shape)), num_classes=num_classes)
    message = str(info.value)
    outside = sorted(v for v in set(values) if not 0 <= v < num_classes)
    assert f": {', '.join(map(str, outside))} (the largest is {max(values)});" in message
    if suggestion is None:
        assert "pass `num_classes`" not in message
        assert message.split("(the largest is")[1].split(";", 1)[1].strip().startswith("pass `label_map`")
    else:
        assert f"if {max(values)} is a class, {suggestion}" in message
        assert "`label_map`" in message  # the other reading is still offered


def test_load_case_errors(tmp_path):
    ok = np.zeros((3, 4), np.uint8)
    with pytest.raises(ValueError, match=r"`label` file 'c_gt.npy' holds labels outside \[0, 2\).*: 5, 7"):
        skio.load_case(_case(tmp_path, ok, np.array([[5, 7, 0, 0]] * 3), np.zeros((3, 4))), num_classes=2)
    with pytest.raises(
        ValueError,
        match=r"shape mismatch in case 'c': `pred` file 'c_pred.npy' has shape \(3, 4\), "
        r"`label` file 'c_gt.npy' has \(4, 3\)",
    ):
        skio.load_case(_case(tmp_path, ok, ok.T, np.zeros((3, 4))), num_classes=2)
    with pytest.raises(ValueError, match=r"`uncertainty` file 'c_unc.npy' has shape \(4, 3\)"):
        skio.load_case(_case(tmp_path, ok, ok, np.zeros((4, 3))), num_classes=2)
    nan = np.zeros((3, 4))
    nan[0, 1] = np.nan
    nan[2, 2] = np.inf
    with pytest.raises(
        ValueError,
        match=r"`uncertainty` file 'c_unc.npy' must be finite, got 1 NaN and 1 infinite value\(s\) of 12",
    ):
        skio.load_case(_case(tmp_path, ok, ok, nan), num_classes=2)
    with pytest.raises(ValueError, match=r"must hold integer labels, got non-integer"):
        skio.load_case(_case(tmp_path, ok + 0.5, ok, np.zeros((3, 4))), num_classes=2)


def test_load_case_png_grey_rgb_is_one_channel_and_colour_is_refused(tmp_path):
    grey = np.zeros((3, 4, 3), np.uint8)
    grey[1, 2] = 1
    p, l, _ = skio.load_case(_case(tmp_path, grey, grey[..., 0], np.zeros((3, 4)), ext=".png"), num_classes=2)
    np.testing.assert_array_equal(p, grey[..., 0])
    np.testing.assert_array_equal(l, grey[..., 0])
    colour = grey.copy()
    colour[0, 0] = (1, 0, 0)
    with pytest.raises(ValueError, match=r"`pred` file 'c_pred.png' is a colour image"):
        skio.load_case(_case(tmp_path, colour, grey[..., 0], np.zeros((3, 4)), ext=".png"), num_classes=2)


def _probs_case(tmp_path: Path, probs: np.ndarray, label: np.ndarray, with_pred: bool = True) -> skio.Case:
    np.savez(tmp_path / "c.npz", probabilities=probs)
    np.save(tmp_path / "c_gt.npy", label)
    files = {"label": tmp_path / "c_gt.npy", "probs": tmp_path / "c.npz"}
    if with_pred:
        np.save(tmp_path / "c_pred.npy", label)
        files["pred"] = tmp_path / "c_pred.npy"
    return skio.Case("c", files)


def test_load_case_probs_precision_matches_uncertainty_from_logits(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 5)) * 20  # classes first, like nnU-Net; many saturated voxels
    logits[:, 0, 0] = [40.0, 0.0, 0.0]
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    label = np.argmax(probs, axis=0)
    _, _, u = skio.load_case(
        _probs_case(tmp_path, probs, label), num_classes=3, uncertainty=None, probs="probs"
    )
    expected = uncertainty_from_logits(logits, axis=0)
    np.testing.assert_allclose(u, expected, rtol=1e-12, atol=0)
    assert u[0, 0] > 0  # 1 - max p would round to exactly 0 here
    assert 1.0 - probs[:, 0, 0].max() == 0.0


def test_load_case_probs_channel_axis(tmp_path):
    probs = np.full((4, 5, 2), 0.5)
    probs[..., 0] = 0.9
    probs[..., 1] = 0.1
    label = np.zeros((4, 5), np.int64)
    # channels last found automatically; pred from the arg-max when no --pred is given
    p, _, u = skio.load_case(
        _probs_case(tmp_path, probs, label, with_pred=False),
        num_classes=2,
        pred=None,
        uncertainty=None,
        probs="probs",
    )
    np.testing.assert_array_equal(p, label)
    np.testing.assert_allclose(u, 0.1)
    square = np.full((2, 2, 2), 0.5)
    case = _probs_case(tmp_path, square, np.zeros((2, 2), np.int64))
    with pytest.raises(
        ValueError, match=r"axes \[0, 1, 2\] could all be the class axis; pass `channel_axis`"
    ):
        skio.load_case(case, num_classes=2, uncertainty=None, probs="probs")
    _, _, u = skio.load_case(case, num_classes=2, uncertainty=None, probs="probs", channel_axis=-1)
    np.testing.assert_allclose(u, 0.5)
    with pytest.raises(ValueError, match=r"`channel_axis` must be in \[-3, 3\)"):
        skio.load_case(case, num_classes=2, uncertainty=None, probs="probs", channel_axis=3)


def test_load_case_probs_errors(tmp_path):
    label = np.zeros((4, 5), np.int64)
    with pytest.raises(ValueError, match=r"must sum to 1 along the class axis 0"):
        skio.load_case(
            _probs_case(tmp_path, np.full((2, 4, 5), 0.3), label),
            num_classes=2,
            uncertainty=None,
            probs="probs",
        )
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], got values in \[-1, 2\]"):
        bad = np.stack([np.full((4, 5), 2.0), np.full((4, 5), -1.0)])
        skio.load_case(_probs_case(tmp_path, bad, label), num_classes=2, uncertainty=None, probs="probs")
    nan = np.full((2, 4, 5), 0.5)
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`probs` file 'c.npz' must be finite, got 1 NaN"):
        skio.load_case(_probs_case(tmp_path, nan, label), num_classes=2, uncertainty=None, probs="probs")
    with pytest.raises(ValueError, match=r"no class axis of size `num_classes` 3 .* look reversed"):
        skio.load_case(
            _probs_case(tmp_path, np.full((3, 5, 4), 1 / 3), label),
            num_classes=3,
            uncertainty=None,
            probs="probs",
        )


def test_probability_maps_keep_tiny_uncertainties():
    # the reader turns probabilities into u with selectivekit.max_softmax_uncertainty (non-max sum)
    p = np.array([[1.0, 1e-30, 2e-30]], dtype=np.float32)
    u = max_softmax_uncertainty(p, axis=1)
    assert u.dtype == np.float32
    np.testing.assert_allclose(u, [3e-30], rtol=1e-6)


def test_load_case_reverse_axes_for_nnunet_npz(tmp_path):
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, size=(4, 5, 6))  # (x, y, z) as nibabel reads the NIfTI
    logits = rng.normal(size=(3, 4, 5, 6))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    stored = probs.transpose(0, 3, 2, 1)  # (c, z, y, x) as nnU-Net writes it
    case = _probs_case(tmp_path, stored, label)
    with pytest.raises(ValueError, match=r"look reversed .* see `reverse_axes`"):
        skio.load_case(case, num_classes=3, uncertainty=None, probs="probs")
    _, _, u = skio.load_case(case, num_classes=3, uncertainty=None, probs="probs", reverse_axes=True)
    np.testing.assert_allclose(u, uncertainty_from_logits(logits, axis=0), rtol=1e-12)
    # an uncertainty map is reversed whole
    unc_case = _case(tmp_path, label, label, rng.random((6, 5, 4)))
    with pytest.raises(ValueError, match=r"the axes look reversed: see `reverse_axes`"):
        skio.load_case(unc_case, num_classes=3)
    _, _, u = skio.load_case(unc_case, num_classes=3, reverse_axes=True)
    np.testing.assert_array_equal(u, np.load(tmp_path / "c_unc.npy").transpose())


def test_load_case_argument_errors(tmp_path):
    ok = np.zeros((3, 4), np.uint8)
    case = _case(tmp_path, ok, ok, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"give exactly one of `uncertainty` and `probs`"):
        skio.load_case(case, num_classes=2, probs="probs")
    with pytest.raises(ValueError, match=r"`pred` is required unless `probs` is given"):
        skio.load_case(case, num_classes=2, pred=None)
    with pytest.raises(ValueError, match=r"`num_classes` must be an integer >= 1, got 0"):
        skio.load_case(case, num_classes=0)
    text = _case(tmp_path, ok, ok, np.array([["a"] * 4] * 3))
    with pytest.raises(
        TypeError, match=r"`uncertainty` file 'c_unc.npy' must hold real numbers, got dtype <U1"
    ):
        skio.load_case(text, num_classes=2)
    with pytest.raises(TypeError, match=r"`pred` file 'c_pred.npy' must hold integer labels, got dtype <U1"):
        skio.load_case(_case(tmp_path, np.array([["a"] * 4] * 3), ok, np.zeros((3, 4))), num_classes=2)


@pytest.mark.parametrize(
    "stored",
    [np.array([0, 500, 600], np.int16), np.array([0, -100, 100], np.int8), np.array([0, 5, 1 << 40])],
    ids=["lookup-table", "negative-int8", "wide-range-sort"],
)
def test_label_map_paths_agree(tmp_path, stored):
    rng = np.random.default_rng(4)
    classes = rng.integers(0, 3, size=(6, 7))
    mapping = {int(stored[1]): 1, int(stored[2]): 2}
    case = _case(tmp_path, stored[classes], stored[classes[::-1]], np.zeros((6, 7)))
    p, l, _ = skio.load_case(case, num_classes=3, label_map=mapping)
    np.testing.assert_array_equal(p, classes)
    np.testing.assert_array_equal(l, classes[::-1])
    listed = ", ".join(str(v) for v in sorted([0, int(stored[1])]))
    with pytest.raises(ValueError, match=rf"outside `label_map`: {int(stored[2])} \(the map has {listed}\)"):
        skio.load_case(case, num_classes=3, label_map={int(stored[1]): 1})


# --- NIfTI: affines compared, gzip streams read to their trailer --------------------------------------------


def _nifti_folders(root, affines: dict[str, np.ndarray] | None = None, n: int = 3, shape=(6, 5, 4)) -> dict:
    """NIfTI folders of ``n`` cases; ``affines`` gives a role ("pred", "unc") another affine in case 1."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(4)
    folders = {name: root / name for name in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    base = np.diag([1.5, 1.5, 2.0, 1.0])
    base[:3, 3] = [-40.0, 12.5, 300.0]
    for i in range(n):
        label = rng.integers(0, 3, shape).astype(np.uint8)
        pred = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 3, label.shape)).astype(
            np.uint8
        )
        u = rng.random(label.shape).astype(np.float32)
        arrays = {"pred": pred, "label": label, "unc": u}
        for role, array in arrays.items():
            affine = base if i != 1 or not affines or role not in affines else affines[role]
            nibabel.save(nibabel.Nifti1Image(array, affine), folders[role] / f"case_{i}.nii.gz")
    return folders


def _las(affine: np.ndarray, shape_x: int = 6) -> np.ndarray:
    """The same grid with the first axis flipped (LAS instead of RAS)."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = shape_x - 1
    return affine @ flip


_BASE = np.diag([1.5, 1.5, 2.0, 1.0])
_BASE[:3, 3] = [-40.0, 12.5, 300.0]


_SPACING = _BASE.copy()
_SPACING[2, 2] = 2.5


_SHIFTED = _BASE.copy()
_SHIFTED[:3, 3] += [0.0, 3.0, 0.0]


_OBLIQUE = _BASE.copy()
_OBLIQUE[0, 1] = 0.01


AFFINE_CASES = {
    "orientation_LAS": (_las(_BASE), "differ in orientation (LAS vs RAS), position (by up to 7.5)"),
    "spacing": (_SPACING, "differ in voxel spacing ((1.5, 1.5, 2.5) vs (1.5, 1.5, 2))"),
    "position": (_SHIFTED, "differ in position (by up to 3)"),
    "oblique": (_OBLIQUE, "differ in direction (a rotation or shear)"),
}


@pytest.mark.parametrize("role", ["pred", "unc"])
@pytest.mark.parametrize("kind", sorted(AFFINE_CASES))
def test_nifti_affine_mismatch_refused(tmp_path, role, kind):
    affine, what = AFFINE_CASES[kind]
    folders = _nifti_folders(tmp_path / "data", {role: affine})
    out = tmp_path / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "case 'case_1'" in err and "affine mismatch" in err and what in err, err
    assert "`--ignore-affine`" in err and not out.exists()
    code, err = run_cli(evaluate_argv(folders, out, "--ignore-affine"))
    assert code == 0, err


@pytest.mark.parametrize("error", [0.0, 1e-5, 9e-4])
def test_nifti_affine_within_tolerance_accepted(tmp_path, error):
    nearly = _BASE + error
    nearly[3] = [0, 0, 0, 1]
    folders = _nifti_folders(tmp_path / "data", {"pred": nearly, "unc": nearly})
    assert run_cli(evaluate_argv(folders, tmp_path / "out"))[0] == 0
    assert error <= skio.AFFINE_TOLERANCE


def test_load_case_affine_names_case_and_files(tmp_path):
    folders = _nifti_folders(tmp_path, {"pred": _SPACING})
    roles = {"pred": folders["pred"], "label": folders["label"], "uncertainty": folders["unc"]}
    cases = skio.pair_files(roles)
    with pytest.raises(ValueError, match=r"case 'case_1': `pred` file 'case_1.nii.gz' .*`ignore_affine`"):
        skio.load_case(cases[1], num_classes=3)
    pred, label, u = skio.load_case(cases[1], num_classes=3, ignore_affine=True)
    assert pred.shape == label.shape == u.shape


def _corrupt_gzip(path, how: str) -> None:
    import gzip

    raw = path.read_bytes()
    if how == "crc":
        raw = raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]
    elif how == "length":
        raw = raw[:-4] + (int.from_bytes(raw[-4:], "little") + 1).to_bytes(4, "little")
    elif how == "values":  # other data under the original trailer: the stored CRC no longer matches
        payload = bytearray(gzip.decompress(raw))
        payload[-1] ^= 0x40  # the last byte of the data
        raw = gzip.compress(bytes(payload))[:-8] + raw[-8:]
    elif how == "truncated_trailer":
        raw = raw[:-5]
    path.write_bytes(raw)


@pytest.fixture(params=["isal", "stdlib"])
def gzip_decoder(request, monkeypatch):
    """Each .nii.gz test runs with python-isal's decoder (skipped when it is not installed) and with
    Python's gzip module."""
    import gzip

    from selectivekit.io import _readers

    if request.param == "isal":
        igzip = pytest.importorskip("isal.igzip")
        monkeypatch.setattr(_readers, "_gzip_open", igzip.open)
    else:
        monkeypatch.setattr(_readers, "_gzip_open", gzip.open)
    return request.param


@pytest.mark.parametrize("how", ["crc", "length", "values", "truncated_trailer"])
@pytest.mark.parametrize("role", ["pred", "label", "unc"])
def test_nifti_gzip_verified_to_its_end(tmp_path, role, how, gzip_decoder):
    # large enough that the reader's buffered input ends before the trailer (a few KiB would not)
    folders = _nifti_folders(tmp_path / "data", shape=(64, 64, 48))
    path = folders[role] / "case_2.nii.gz"
    before = skio.read_image(path)
    _corrupt_gzip(path, how)
    with pytest.raises(ValueError, match=r"cannot read 'case_2.nii.gz' as .nii.gz"):
        skio.read_image(path)
    out = tmp_path / "out"
    code, err = run_cli(evaluate_argv(folders, out))
    assert code == 1 and err.count("\n") == 1 and "case_2.nii.gz" in err and not out.exists(), err
    assert before.shape == (64, 64, 48)


def test_nifti_reader_values_unchanged(tmp_path, gzip_decoder):
    """The verified reader gives nibabel's array, for .nii and .nii.gz, NIfTI-1 and NIfTI-2, scaled data."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    data = rng.random((5, 4, 3)).astype(np.float32)
    for cls in (nibabel.Nifti1Image, nibabel.Nifti2Image):
        for ext in (".nii", ".nii.gz"):
            image = cls(data, np.eye(4))
            path = tmp_path / f"{cls.__name__}{ext}"
            nibabel.save(image, path)
            np.testing.assert_array_equal(skio.read_image(path), data)
    scaled = nibabel.Nifti1Image((data * 1000).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(0.5, 2.0)
    nibabel.save(scaled, tmp_path / "scaled.nii.gz")
    want = np.asanyarray(nibabel.load(tmp_path / "scaled.nii.gz").dataobj)
    np.testing.assert_array_equal(skio.read_image(tmp_path / "scaled.nii.gz"), want)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64], ids=lambda d: d.__name__
)
def test_nifti_gz_fast_path_gives_nibabels_array(tmp_path, dtype, gzip_decoder):
    """The .nii.gz reader (either gzip decoder) gives plain nibabel's array: same values, same dtype (no
    cast to a wider one), same shape, for 3D and 4D files larger than the decoders' buffers."""
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(3)
    for shape in ((70, 61, 53), (20, 17, 15, 3)):
        data = (rng.random(shape) * 200).astype(dtype)
        path = tmp_path / f"{dtype.__name__}_{len(shape)}d.nii.gz"
        nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
        want = np.asanyarray(nibabel.load(path).dataobj)
        got = skio.read_image(path)
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable


def test_gzip_decoder_is_isal_when_installed_else_the_standard_library(monkeypatch, tmp_path):
    import gzip
    import sys

    from selectivekit.io import _readers

    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "c.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4)), path)
    monkeypatch.setitem(sys.modules, "isal", None)  # an import of isal now raises ImportError
    monkeypatch.setitem(sys.modules, "isal.igzip", None)
    assert _readers._default_gzip_open() is gzip.open
    # without isal, the first read chooses Python's gzip and reads the file
    monkeypatch.setattr(_readers, "_gzip_open", None)
    np.testing.assert_array_equal(skio.read_image(path), np.arange(24).reshape(2, 3, 4))
    assert _readers._gzip_open is gzip.open
    monkeypatch.undo()
    igzip = pytest.importorskip("isal.igzip")
    assert _readers._default_gzip_open() is igzip.open
    # the reader opens .nii.gz files through the chosen decoder
    opened = []

    def spy(*args, **kwargs):
        opened.append(args[0])
        return igzip.open(*args, **kwargs)

    monkeypatch.setattr(_readers, "_gzip_open", spy)
    np.testing.assert_array_equal(skio.read_image(path), np.arange(24).reshape(2, 3, 4))
    assert opened == [path]
