"""Silent wrong values found by attacking the library and the command line, each pinned by a test.

Masked arrays, integers above 2**53 and long doubles in the accumulators, the CLI's threshold compare,
NIfTI affines, gzip trailers, tampered state and threshold files, and classes present in no file. Each
test compares with a reference computed here (the in-memory exact functions, loops, float64 arithmetic).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from tests.conftest import cli_inputs, evaluate_argv, read_report, run_cli, write_case_folders

# --- masked arrays: refused, the message points to `mask=` ----------------------------------------------

_RNG = np.random.default_rng(0)
_U = _RNG.random(40)
_C = _RNG.random(40) < 0.7
_PRED = _RNG.integers(0, 3, (3, 5, 5))
_LABEL = _RNG.integers(0, 3, (3, 5, 5))
_US = _RNG.random((3, 5, 5))


def _masked(x: np.ndarray) -> np.ma.MaskedArray:
    """``x`` as a masked array whose first value is NaN (or an out-of-range label) under the mask."""
    data = np.array(x, dtype=np.float64 if x.dtype.kind == "f" else x.dtype)
    flat = data.reshape(-1)
    flat[0] = np.nan if data.dtype.kind == "f" else 99 if data.dtype.kind in "iu" else flat[0]
    mask = np.zeros(data.shape, bool)
    mask.reshape(-1)[0] = True
    return np.ma.masked_array(data, mask=mask)


def _rc_acc(u, c):
    acc = sk.RiskCoverageAccumulator()
    acc.update(u, c)
    return acc.aurc()


def _seg_acc(p, t, u):
    acc = sk.SegmentationAccumulator(num_classes=3)
    for i in range(len(p)):
        acc.update(p[i], t[i], u[i])
    return acc.compute().mean_dice


INSTANCE_FUNCTIONS = {
    "aurc": sk.aurc,
    "e_aurc": sk.e_aurc,
    "augrc": sk.augrc,
    "risk_coverage_curve": lambda u, c: sk.risk_coverage_curve(u, c).threshold,
    "gamma": lambda u, c: sk.gamma(u, c, 0.5),
    "selective_accuracy": lambda u, c: sk.selective_accuracy(u, c, 0.5),
    "coverage_threshold": lambda u, c: sk.coverage_threshold(u, 0.5),
    "bootstrap_ci": lambda u, c: sk.bootstrap_ci("aurc", u, c, n_resamples=20, seed=0),
    "guaranteed_risk_threshold": lambda u, c: sk.guaranteed_risk_threshold(u, c, target_risk=0.5, delta=0.1),
    "uncertainty_margin_loss": sk.uncertainty_margin_loss,
    "RiskCoverageAccumulator": _rc_acc,
}

SEGMENTATION_FUNCTIONS = {
    "aurc_dice": lambda p, t, u: sk.aurc_dice(p, t, u, num_classes=3),
    "dice_at_coverage": lambda p, t, u: sk.dice_at_coverage(p, t, u, [0.5], num_classes=3)[0].mean,
    "dice_coverage_curve": lambda p, t, u: sk.dice_coverage_curve(p, t, u, num_classes=3),
    "bootstrap_ci": lambda p, t, u: sk.bootstrap_ci(
        "aurc_dice", p, t, u, num_classes=3, n_resamples=20, seed=0
    ),
    "guaranteed_dice_threshold": lambda p, t, u: sk.guaranteed_dice_threshold(
        p, t, u, num_classes=3, max_dice_loss=0.5
    ),
    "SegmentationAccumulator": _seg_acc,
}


_WITH_MASK = {
    "aurc": sk.aurc,
    "e_aurc": sk.e_aurc,
    "augrc": sk.augrc,
    "risk_coverage_curve": sk.risk_coverage_curve,
    "gamma": lambda u, c, *, mask: sk.gamma(u, c, 0.5, mask=mask),
    "selective_accuracy": lambda u, c, *, mask: sk.selective_accuracy(u, c, 0.5, mask=mask),
    "coverage_threshold": lambda u, c, *, mask: sk.coverage_threshold(u, 0.5, mask=mask),
    "uncertainty_margin_loss": sk.uncertainty_margin_loss,
}
_CASES = [(n, "uncertainty") for n in sorted(INSTANCE_FUNCTIONS)]
_CASES += [(n, "correct") for n in sorted(INSTANCE_FUNCTIONS) if n != "coverage_threshold"]
_CASES += [(n, "mask") for n in sorted(_WITH_MASK)]


@pytest.mark.parametrize(("name", "which"), _CASES)
def test_masked_array_refused_instance(name, which):
    under_mask = np.arange(_U.size) == 0
    if which == "mask":
        mask = np.ma.masked_array(np.ones(_U.size, bool), mask=under_mask)
        with pytest.raises(TypeError, match=r"`mask` is a NumPy masked array.*`mask="):
            _WITH_MASK[name](_U, _C, mask=mask)
        return
    args = (_masked(_U), _C) if which == "uncertainty" else (_U, np.ma.masked_array(_C, mask=under_mask))
    with pytest.raises(TypeError, match=rf"`{which}` is a NumPy masked array.*`mask="):
        INSTANCE_FUNCTIONS[name](*args)


@pytest.mark.parametrize("which", ["pred", "label", "uncertainty"])
@pytest.mark.parametrize("per_image", [False, True], ids=["stacked", "sequence"])
@pytest.mark.parametrize("name", sorted(SEGMENTATION_FUNCTIONS))
def test_masked_array_refused_segmentation(name, per_image, which):
    arrays = {"pred": _PRED, "label": _LABEL, "uncertainty": _US}
    arrays[which] = _masked(arrays[which])
    args = [arrays[k] for k in ("pred", "label", "uncertainty")]
    if per_image:
        args = [list(a) for a in args]
    with pytest.raises(TypeError, match=rf"`{which}(\[0\])?` is a NumPy masked array.*`mask=`"):
        SEGMENTATION_FUNCTIONS[name](*args)


@pytest.mark.parametrize("fn", [sk.max_softmax_uncertainty, sk.entropy_uncertainty])
def test_masked_probabilities_refused(fn):
    probs = np.ma.masked_array(np.full((4, 2), 0.5), mask=np.eye(4, 2, dtype=bool))
    with pytest.raises(TypeError, match=r"`probs` is a NumPy masked array"):
        fn(probs)


def test_mask_argument_is_the_way():
    """What the message suggests gives the value of the unmasked instances alone."""
    u = _masked(_U)
    keep = ~np.ma.getmaskarray(u)
    assert sk.aurc(u.filled(0), _C, mask=keep) == sk.aurc(_U[1:], _C[1:])


# --- integers beyond 2**53 and long doubles: exact or refused ---------------------------------------------


def _dense_ranks(u: np.ndarray) -> np.ndarray:
    """Ranks with ties kept (equal values, equal rank): the order of ``u`` in small float64 numbers."""
    return np.unique(u, return_inverse=True)[1].reshape(u.shape).astype(np.float64)


def _to_lib(x: np.ndarray, lib: str):
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@given(
    offset=st.sampled_from([2**53, 2**60, 2**62, -(2**62)]),
    n=st.integers(4, 60),
    n_updates=st.integers(1, 4),
    ties=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_big_int64_risk_accumulator_exact(lib, offset, n, n_updates, ties, seed):
    rng = np.random.default_rng(seed)
    u = offset + rng.integers(0, ties, n)  # distinct values 1 apart: all tied in float64
    correct = rng.random(n) < 0.6
    acc = sk.RiskCoverageAccumulator()
    for part_u, part_c in zip(np.array_split(u, n_updates), np.array_split(correct, n_updates), strict=True):
        acc.update(_to_lib(part_u, lib), _to_lib(part_c, lib))
    assert acc.path == "exact"
    want = sk.aurc(_dense_ranks(u), correct)
    assert sk.aurc(u, correct) == want  # the in-memory function is exact on int64
    assert acc.aurc() == want
    assert acc.augrc() == sk.augrc(_dense_ranks(u), correct)
    assert acc.e_aurc() == sk.e_aurc(_dense_ranks(u), correct)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@given(
    offset=st.sampled_from([2**53, 2**61, -(2**62)]),
    n_images=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_big_int64_segmentation_accumulator_exact(lib, offset, n_images, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 3, (n_images, 30))
    label = rng.integers(0, 3, (n_images, 30))
    u = offset + rng.integers(0, 50, (n_images, 30))
    acc = sk.SegmentationAccumulator(num_classes=3)
    for i in range(n_images):
        acc.update(_to_lib(pred[i], lib), _to_lib(label[i], lib), _to_lib(u[i], lib))
    assert acc.path == "exact"
    want = sk.aurc_dice(pred, label, _dense_ranks(u), num_classes=3)
    assert sk.aurc_dice(pred, label, u, num_classes=3) == want
    assert acc.aurc_dice() == want
    got = acc.dice_at_coverage([0.5])[0].mean
    assert got == sk.dice_at_coverage(pred, label, _dense_ranks(u), [0.5], num_classes=3)[0].mean


def test_big_int64_mixed_with_floats():
    """Whole floats join the integers exactly; fractional floats cannot be compared exactly: refused."""
    rng = np.random.default_rng(3)
    big = 2**60 + rng.integers(0, 9, 20)
    small = rng.integers(0, 9, 20).astype(np.float64)
    c = rng.random(40) < 0.5
    acc = sk.RiskCoverageAccumulator()
    acc.update(small, c[:20])
    acc.update(big, c[20:])
    both = np.concatenate([small.astype(np.int64), big])
    assert acc.aurc() == sk.aurc(_dense_ranks(both), c)
    acc = sk.RiskCoverageAccumulator()
    acc.update(small + 0.5, c[:20])
    acc.update(big, c[20:])
    with pytest.raises(ValueError, match=r"`uncertainty` holds integers beyond 2\*\*53"):
        acc.aurc()


LONG_DOUBLE_WIDE = np.finfo(np.longdouble).nmant > 52
_LD = np.longdouble(1) + np.arange(40, dtype=np.longdouble) * np.finfo(np.longdouble).eps


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("name", sorted(INSTANCE_FUNCTIONS.keys() - {"uncertainty_margin_loss"}))
def test_long_double_refused_instance(name):
    assert np.unique(_LD.astype(np.float64)).size == 1  # distinct long doubles, one float64
    with pytest.raises(TypeError, match=r"`uncertainty` has dtype float\d+ \(long double\)"):
        INSTANCE_FUNCTIONS[name](_LD, _C)


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("per_image", [False, True], ids=["stacked", "sequence"])
@pytest.mark.parametrize("name", sorted(SEGMENTATION_FUNCTIONS))
def test_long_double_refused_segmentation(name, per_image):
    u = (np.longdouble(1) + np.arange(_US.size) * np.finfo(np.longdouble).eps).reshape(_US.shape)
    args = [_PRED, _LABEL, u]
    if per_image:
        args = [list(a) for a in args]
    with pytest.raises(TypeError, match=r"`uncertainty(\[0\])?` has dtype float\d+ \(long double\)"):
        SEGMENTATION_FUNCTIONS[name](*args)


def _npy_folders(root, preds, labels, us) -> dict[str, Path]:
    """NumPy folders with one file ``case_{i}.npy`` per image in each."""
    return write_case_folders(root, preds, labels, us, ext=".npy", stem="case_{i}", suffixes=False)


@pytest.mark.parametrize("offset", [2**53, 2**62])
def test_cli_big_int64_default_run_equals_exact(tmp_path, offset):
    rng = np.random.default_rng(5)
    preds = [rng.integers(0, 3, (6, 7)) for _ in range(3)]
    labels = [rng.integers(0, 3, (6, 7)) for _ in range(3)]
    us = [offset + rng.integers(0, 200, (6, 7)) for _ in range(3)]
    folders = _npy_folders(tmp_path, preds, labels, us)
    assert run_cli(evaluate_argv(folders, tmp_path / "default"))[0] == 0
    assert run_cli(evaluate_argv(folders, tmp_path / "exact", "--exact"))[0] == 0
    default, exact = read_report(tmp_path / "default"), read_report(tmp_path / "exact")
    ranks = np.unique(np.concatenate([u.ravel() for u in us]), return_inverse=True)[1]
    ranks = np.split(ranks.astype(np.float64), np.cumsum([u.size for u in us])[:-1])
    ranks = [r.reshape(u.shape) for r, u in zip(ranks, us, strict=True)]
    want = sk.aurc_dice(preds, labels, ranks, num_classes=3)
    assert default["path"] == "exact"
    assert default["aurc_dice"] == pytest.approx(want, rel=1e-12)
    assert exact["aurc_dice"] == pytest.approx(want, rel=1e-12)


# --- threshold files: every field checked; evaluate --threshold compares with the exact threshold --------


def _calibrate(folders, out, *extra) -> list[str]:
    return ["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """Small folders (float32 u), and the threshold files ``calibrate`` writes for them (crc and ltt)."""

    root = tmp_path_factory.mktemp("calibrated")
    rng = np.random.default_rng(11)
    preds = [rng.integers(0, 3, (8, 9)) for _ in range(8)]
    labels = [np.where(rng.random(p.shape) < 0.8, p, rng.integers(0, 3, p.shape)) for p in preds]
    us = [rng.random(p.shape).astype(np.float32) for p in preds]
    folders = _npy_folders(root, preds, labels, us)
    files = {}
    for method, extra in (("crc", ()), ("ltt", ("--delta", "0.2"))):
        files[method] = root / f"{method}.json"
        code, err = run_cli(_calibrate(folders, files[method], *extra))
        assert code == 0, err
    return root, folders, {m: json.loads(f.read_text()) for m, f in files.items()}


def _set(data: dict, field: str, value) -> dict:

    data = copy.deepcopy(data)
    *parents, last = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()

TAMPERED = [
    ("crc", "max_dice_loss", 5),
    ("crc", "max_dice_loss", -1),
    ("crc", "max_dice_loss", "0.1"),
    ("ltt", "delta", 7),
    ("ltt", "delta", None),
    ("crc", "delta", 0.1),
    ("crc", "method", "magic"),
    ("crc", "refers_all", True),
    ("crc", "refers_all", _DELETE),
    ("crc", "threshold", 10**400),
    ("crc", "threshold", "0.5"),
    ("crc", "threshold", True),
    ("crc", "calibration", 5),
    ("crc", "calibration.n_images", 0),
    ("crc", "calibration.coverage", 1.5),
    ("crc", "calibration.loss", -0.1),
    ("crc", "calibration.bound", 0.9),
    ("crc", "calibration.p_value", 0.5),
    ("ltt", "calibration.p_value", None),
    ("crc", "settings", [1]),
    ("crc", "settings.num_classes", "3"),
    ("crc", "settings.include_background", "no"),
    ("crc", "settings.source", "logits"),
    ("crc", "settings.label_map", {"1": "one"}),
]


@pytest.mark.parametrize(
    ("method", "field", "value"),
    TAMPERED,
    ids=[f"{f}=missing" if v is _DELETE else f"{f}={v!r}"[:40] for _, f, v in TAMPERED],
)
def test_threshold_file_every_field_checked(calibrated, tmp_path, method, field, value):

    _, folders, files = calibrated
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(files[method], field, value)))
    out = tmp_path / "out"
    code, err = run_cli(evaluate_argv(folders, out, "--threshold", str(bad)))
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "bad.json" in err and f"`{field}`" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("settings.source", "probs", "source"),
        ("settings.num_classes", 4, "num_classes"),
        ("settings.include_background", True, "include_background"),
        ("settings.label_map", {"1": 2, "2": 1}, "label_map"),
        ("settings.label_map_labels", {"1": 1}, "label_map_labels"),
    ],
)
def test_threshold_file_from_other_settings_refused(calibrated, tmp_path, field, value, flag):

    _, folders, files = calibrated
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_set(files["crc"], field, value)))
    code, err = run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(other)))
    assert code == 2 and err.count("\n") == 1 and f"calibrated with {flag}=" in err, err


@pytest.mark.parametrize("method", ["crc", "ltt"])
def test_threshold_file_written_by_calibrate_accepted(calibrated, tmp_path, method):

    _, folders, files = calibrated
    good = tmp_path / "good.json"
    good.write_text(json.dumps(files[method]))
    assert run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(good)))[0] == 0
    assert read_report(tmp_path / "out")["fixed_threshold"]["threshold"] == files[method]["threshold"]


def _between(dtype, rng) -> tuple[list[np.ndarray], float]:
    """Maps of ``dtype`` and a float64 threshold that casting to ``dtype`` would move onto a used value."""
    if np.dtype(dtype).kind == "i":
        base = 2**60
        us = [base + rng.integers(0, 512, (8, 9)) for _ in range(4)]
        return us, float(base + 256)  # float64 rounds base+257..base+384 onto the threshold
    info = np.finfo(dtype)
    a = dtype(0.5)
    b = np.nextafter(a, dtype(1))
    t = float(a) + 0.75 * (float(b) - float(a))  # rounds to b in dtype
    assert dtype(t) == b and float(a) < t < float(b)
    values = np.array([a, b, np.nextafter(b, dtype(1)), dtype(0.25)], dtype=dtype)
    us = [values[rng.integers(0, 4, (8, 9))] for _ in range(4)]
    assert info.bits <= 64
    return us, t


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int64], ids=["float16", "float32", "int64"])
def test_evaluate_threshold_compares_exactly(calibrated, tmp_path, dtype):

    _, _, files = calibrated
    rng = np.random.default_rng(2)
    us, t = _between(dtype, rng)
    preds = [rng.integers(0, 3, u.shape) for u in us]
    labels = [np.where(rng.random(p.shape) < 0.7, p, rng.integers(0, 3, p.shape)) for p in preds]
    folders = _npy_folders(tmp_path / "data", preds, labels, us)
    threshold = tmp_path / "t.json"
    threshold.write_text(json.dumps(_set(files["crc"], "threshold", t)))
    assert run_cli(evaluate_argv(folders, tmp_path / "out", "--threshold", str(threshold)))[0] == 0
    fixed = read_report(tmp_path / "out")["fixed_threshold"]
    accepted = [
        np.array([[int(v) <= t if dtype is np.int64 else float(v) <= t for v in row] for row in u])
        for u in us
    ]
    want_coverage = sum(int(a.sum()) for a in accepted) / sum(u.size for u in us)
    assert fixed["coverage"] == want_coverage
    after = [np.where(a, p, lab) for a, p, lab in zip(accepted, preds, labels, strict=True)]
    direct = sk.dice_at_coverage(after, labels, [np.zeros(u.shape) for u in us], 1.0, num_classes=3)[0]
    assert fixed["mean"] == pytest.approx(direct.mean, rel=1e-12)


# --- NIfTI: affines compared, gzip streams read to their trailer ------------------------------------------


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
    from selectivekit import io as skio

    nearly = _BASE + error
    nearly[3] = [0, 0, 0, 1]
    folders = _nifti_folders(tmp_path / "data", {"pred": nearly, "unc": nearly})
    assert run_cli(evaluate_argv(folders, tmp_path / "out"))[0] == 0
    assert error <= skio.AFFINE_TOLERANCE


def test_load_case_affine_names_case_and_files(tmp_path):
    from selectivekit import io as skio

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


@pytest.mark.parametrize("how", ["crc", "length", "values", "truncated_trailer"])
@pytest.mark.parametrize("role", ["pred", "label", "unc"])
def test_nifti_gzip_verified_to_its_end(tmp_path, role, how):
    from selectivekit import io as skio

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


def test_nifti_reader_values_unchanged(tmp_path):
    """The verified reader gives nibabel's array, for .nii and .nii.gz, NIfTI-1 and NIfTI-2, scaled data."""
    nibabel = pytest.importorskip("nibabel")
    from selectivekit import io as skio

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


# --- merge: every invariant of a state file checked -------------------------------------------------------


@pytest.fixture(scope="module")
def shard_states(tmp_path_factory):
    """Two shard states of one evaluation, on the exact path and on the grid."""
    root = tmp_path_factory.mktemp("states")
    rng = np.random.default_rng(8)
    preds = [rng.integers(0, 3, (7, 6)) for _ in range(5)]
    labels = [np.where(rng.random(p.shape) < 0.8, p, rng.integers(0, 3, p.shape)) for p in preds]
    us = [np.round(rng.random(p.shape) * 20).astype(np.float32) / 20 for p in preds]
    folders = _npy_folders(root, preds, labels, us)
    states = {}
    for path_name, budget in (("exact", "1GiB"), ("grid", "0")):
        for i in range(2):
            state = root / f"{path_name}-{i}.npz"
            args = evaluate_argv(folders, root / "unused", "--max-memory", budget, "--shard", f"{i}/2")
            assert run_cli([*args, "--save-state", str(state)])[0] == 0
            states[path_name, i] = state
    return root, states


def _tampered(source, target, change) -> None:
    """``source`` with ``change(header, arrays)`` applied, written as a state file to ``target``."""
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays.pop("header").tobytes())
    acc = {k[4:]: v for k, v in arrays.items() if k.startswith("acc_")}
    change(header, acc)
    payload = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload |= {f"acc_{k}": v for k, v in acc.items()}
    np.savez(target, **payload)


def _set_header(key, value):
    def change(header, acc):
        header[key] = value(header[key]) if callable(value) else value

    return change


def _set_array(key, value):
    def change(header, acc):
        acc[key] = value(acc[key].copy())

    return change


def _bump(index, by=1):
    def f(a):
        a[index] += by
        return a

    return f


STATE_TAMPERING = {
    # header: names, voxel counts, shard, coverages
    "names_one_more": ("both", _set_header("names", lambda n: [*n, "extra"])),
    "names_one_less": ("both", _set_header("names", lambda n: n[:-1])),
    "names_repeated": ("both", _set_header("names", lambda n: [n[0]] * len(n))),
    "names_of_other_shard": ("both", _set_header("names", lambda n: ["case_4", *n[1:]])),
    "voxels_changed": ("both", _set_header("voxels", lambda v: [v[0] + 1, *v[1:]])),
    "voxels_negative": ("both", _set_header("voxels", lambda v: [-v[0], *v[1:]])),
    "n_cases": ("both", _set_header("n_cases", 9)),
    "requested": ("both", _set_header("requested", [1.5])),
    "settings_num_classes": ("both", _set_header("settings", lambda s: {**s, "num_classes": 4})),
    # exact path arrays
    "raw_size_shifted": ("exact", _set_array("raw_size", lambda a: a + np.array([1, -1, 0])[: a.size])),
    "raw_pred_class": ("exact", _set_array("raw_pred", lambda a: a.astype(np.int64) + 3)),
    "raw_u_nan": ("exact", _set_array("raw_u", lambda a: np.where(np.arange(a.size) == 0, np.nan, a))),
    "raw_u_short": ("exact", _set_array("raw_u", lambda a: a[:-1])),
    "raw_label_float": ("exact", _set_array("raw_label", lambda a: a.astype(np.float64))),
    # grid arrays
    "cells_count": ("grid", _set_array("cells_count", _bump(0))),
    "cells_id_reversed": ("grid", _set_array("cells_id", lambda a: a[::-1])),
    "cells_top_other_cell": ("grid", _set_array("cells_top", lambda a: a[::-1])),
    "cells_top_int": ("grid", _set_array("cells_top", lambda a: a.astype(np.int64))),
    "img_size": ("grid", _set_array("img_size", _bump(0))),
    "img_cum_count_reversed": ("grid", _set_array("img_cum_count", lambda a: a[::-1])),
    "img_cum_count_last": ("grid", _set_array("img_cum_count", _bump(-1))),
    "img_ev_fn_huge": ("grid", _set_array("img_ev_fn", _bump(0, 10**6))),
    "img_ev_fp_huge": ("grid", _set_array("img_ev_fp", _bump(0, 10**6))),
    "img_label_count": ("grid", _set_array("img_label_count", _bump(0, 10**6))),
    "img_ev_class": ("grid", _set_array("img_ev_class", _bump(0, 5))),
    "img_cells_outside": ("grid", _set_array("img_cells", lambda a: a.astype(np.int64) + 2**20)),
    "img_label_count_len": ("grid", _set_array("img_label_count_len", _bump(0))),
}

SHARED_FIELDS = {"n_cases", "requested", "settings_num_classes"}
_TAMPER_CASES = [
    (name, path)
    for name, (where, _) in STATE_TAMPERING.items()
    for path in (("exact", "grid") if where == "both" else (where,))
]


@pytest.mark.parametrize(("name", "path"), _TAMPER_CASES)
def test_merge_refuses_tampered_state(shard_states, tmp_path, name, path):
    _, states = shard_states
    bad = tmp_path / "edited.npz"
    _tampered(states[path, 0], bad, STATE_TAMPERING[name][1])
    other = states[path, 1]
    if name in SHARED_FIELDS:  # edited in every shard, else the shards would merely differ
        other = tmp_path / "edited-too.npz"
        _tampered(states[path, 1], other, STATE_TAMPERING[name][1])
    out = tmp_path / "out"
    code, err = run_cli(["merge", str(bad), str(other), "--out", str(out)])
    assert code == 1 and err.count("\n") == 1, err
    assert "edited" in err and "internal error" not in err, err
    assert not out.exists()
    # the untouched states still merge
    assert run_cli(["merge", str(states[path, 0]), str(states[path, 1]), "--out", str(out)])[0] == 0


# --- compare: the bootstrap state of each run checked ----------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two models evaluated with --ci on the same 5 images."""
    pytest.importorskip("scipy")
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(9)
    labels = [rng.integers(0, 3, (6, 7)) for _ in range(5)]
    runs = []
    for model in range(2):
        preds = [np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape)) for t in labels]
        us = [rng.random(t.shape).astype(np.float32) for t in labels]
        folders = _npy_folders(root / f"data{model}", preds, labels, us)
        out = root / f"run{model}"
        args = evaluate_argv(folders, out, "--ci", "0.9", "--n-resamples", "50")
        assert run_cli(args)[0] == 0
        runs.append(out)
    return runs


def _edit_state(key, value):
    def change(arrays):
        arrays[key] = value(arrays[key].copy()) if callable(value) else value
        return arrays

    return change


def _drop(key):
    def change(arrays):
        del arrays[key]
        return arrays

    return change


BOOTSTRAP_TAMPERING = {
    "version_99": _edit_state("format_version", np.int64(99)),
    "version_float": _edit_state("format_version", np.float64(1.0)),
    "thr_reversed": _edit_state("thr", lambda a: a[::-1]),
    "cnt_reversed": _edit_state("cnt", lambda a: a[::-1]),
    "chg_t_reversed": _edit_state("chg_t", lambda a: a[::-1]),
    "chg_d_above_one": _edit_state("chg_d", lambda a: a + 1.5),
    "lengths_moved": _edit_state("lengths", lambda a: a + np.r_[1, -1, np.zeros(a.size - 2, int)]),
    "n_vox_changed": _edit_state("n_vox", lambda a: a + 1),
    "thr_nan": _edit_state("thr", lambda a: np.where(np.arange(a.size) == 3, np.nan, a)),
    "cnt_float": _edit_state("cnt", lambda a: a.astype(np.float64)),
    "one_image_less": _edit_state("changes", lambda a: a[:-1]),
    "missing_chg_d": _drop("chg_d"),
}


@pytest.mark.parametrize("name", sorted(BOOTSTRAP_TAMPERING))
def test_compare_refuses_tampered_bootstrap_state(two_runs, tmp_path, name):
    import shutil

    run_a = tmp_path / "run_a"
    shutil.copytree(two_runs[0], run_a)
    state = run_a / "bootstrap_state.npz"
    with np.load(state) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(state, **BOOTSTRAP_TAMPERING[name](arrays))
    out = tmp_path / "cmp"
    code, err = run_cli(["compare", str(run_a), str(two_runs[1]), "--out", str(out), "--n-resamples", "20"])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "`RUN_A`" in err and "bootstrap_state.npz" in err and "internal error" not in err, err
    assert not out.exists()


def test_compare_accepts_untouched_bootstrap_states(two_runs, tmp_path):
    out = tmp_path / "cmp"
    code, err = run_cli(
        ["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--n-resamples", "20"]
    )
    assert code == 0, err
    assert json.loads((out / "comparison.json").read_text())["paired"]["available"]


# --- classes in no file: warned about; Dice per class in every report --------------------------------------


def _dice_per_class(preds, labels, classes) -> np.ndarray:
    """Dice of each class in each image at coverage 1, from scratch (1.0 where absent from both)."""
    out = np.empty((len(preds), len(classes)))
    for i, (p, t) in enumerate(zip(preds, labels, strict=True)):
        for j, k in enumerate(classes):
            tp = int(np.sum((p == k) & (t == k)))
            den = int(np.sum(p == k)) + int(np.sum(t == k))
            out[i, j] = 1.0 if den == 0 else 2 * tp / den
    return out


@pytest.mark.parametrize("mode", ["default", "exact", "grid", "merge"])
@pytest.mark.parametrize(("num_classes", "background"), [(5, False), (3, False), (4, True)])
def test_per_class_dice_and_absent_classes(tmp_path, mode, num_classes, background):
    rng = np.random.default_rng(21)
    labels = [rng.integers(0, 3, (6, 8)) for _ in range(4)]  # classes 0-2 only
    preds = [np.where(rng.random(t.shape) < 0.75, t, rng.integers(0, 3, t.shape)) for t in labels]
    us = [rng.random(t.shape).astype(np.float32) for t in labels]
    folders = _npy_folders(tmp_path / "data", preds, labels, us)
    out = tmp_path / "out"
    args = evaluate_argv(folders, out, "--coverages", "0.8")
    args[args.index("--num-classes") + 1] = str(num_classes)
    args += ["--include-background"] if background else []
    if mode in ("exact", "grid"):
        args += ["--exact"] if mode == "exact" else ["--max-memory", "0"]
    if mode == "merge":
        states = [str(tmp_path / f"s{i}.npz") for i in range(2)]
        for i, state in enumerate(states):
            shard_args = [a if a != str(out) else str(tmp_path / "unused") for a in args]
            assert run_cli([*shard_args, "--shard", f"{i}/2", "--save-state", state])[0] == 0
        code, err = run_cli(["merge", *states, "--out", str(out)])
    else:
        code, err = run_cli(args)
    assert code == 0, err
    report = read_report(out)
    classes = list(range(0 if background else 1, num_classes))
    absent = [k for k in classes if k > 2]
    assert report["absent_classes"] == absent
    warnings_ = [line for line in err.splitlines() if "warning" in line]
    if absent:
        assert (
            len(warnings_) == 1 and "occur" in warnings_[0] and f"--num-classes {num_classes}" in warnings_[0]
        )
    else:
        assert warnings_ == []
    want = _dice_per_class(preds, labels, classes)
    assert [row["class"] for row in report["per_class"]] == classes
    for j, row in enumerate(report["per_class"]):
        k = classes[j]
        assert row["dice_full"] == pytest.approx(want[:, j].mean(), rel=1e-12)
        assert row["labelled_voxels"] == sum(int(np.sum(t == k)) for t in labels)
        assert row["predicted_voxels"] == sum(int(np.sum(p == k)) for p in preds)
        assert [c["requested"] for c in row["coverages"]] == [0.8]
    # the mean Dice is the mean of the class means (every image has every class column)
    assert report["dice_full"]["mean"] == pytest.approx(want.mean(), rel=1e-12)
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Dice per class" in markdown and "Dice per class" in html
    from selectivekit.report import percent

    for row in report["per_class"]:
        cells = [row["class"], f"{row['labelled_voxels']:,}", f"{row['predicted_voxels']:,}"]
        cells += [percent(row["dice_full"]), percent(row["coverages"][0]["dice"])]
        assert "| " + " | ".join(map(str, cells)) + " |" in markdown
    assert ("**Warning:**" in markdown) == bool(absent) and ("Warning" in html) == bool(absent)


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("extra", [[], ["--exact"], ["--max-memory", "0"]], ids=["default", "exact", "grid"])
def test_cli_long_double_maps_refused(tmp_path, extra):
    rng = np.random.default_rng(6)
    labels = [rng.integers(0, 3, (5, 6)) for _ in range(2)]
    us = [np.longdouble(1) + np.arange(30).reshape(5, 6) * np.finfo(np.longdouble).eps for _ in labels]
    folders = _npy_folders(tmp_path / "data", labels, labels, us)
    code, err = run_cli(evaluate_argv(folders, tmp_path / "out", *extra))
    assert code == 1 and err.count("\n") == 1 and "(long double)" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("budget", ["1GiB", "0"], ids=["exact", "grid"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64_big", "int64_mixed", "uint8"])
def test_merge_accepts_untouched_states_of_every_dtype(tmp_path, dtype, budget):
    """The checks refuse no state that `evaluate --save-state` writes; the merge equals one process."""
    rng = np.random.default_rng(12)
    labels = [rng.integers(0, 3, (9, 7)) for _ in range(5)]
    preds = [np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 3, t.shape)) for t in labels]
    if dtype == "int64_big":
        us = [2**60 + rng.integers(0, 2**40, t.shape) for t in labels]
    elif dtype == "int64_mixed":  # small integers in some images (kept as float64), beyond 2**53 in others
        us = [(2**60 if i % 2 else 0) + rng.integers(0, 300, t.shape) for i, t in enumerate(labels)]
    else:
        us = [(rng.random(t.shape) * 200).astype(dtype) for t in labels]
    folders = _npy_folders(tmp_path / "data", preds, labels, us)
    states = [str(tmp_path / f"s{i}.npz") for i in range(3)]
    for i, state in enumerate(states):
        args = evaluate_argv(folders, tmp_path / "unused", "--max-memory", budget, "--shard", f"{i}/3")
        assert run_cli([*args, "--save-state", state])[0] == 0
    code, err = run_cli(["merge", *states, "--out", str(tmp_path / "merged")])
    assert code == 0, err
    assert run_cli(evaluate_argv(folders, tmp_path / "single", "--max-memory", budget))[0] == 0
    assert read_report(tmp_path / "merged") == read_report(tmp_path / "single")


@pytest.mark.parametrize("beyond", [False, True], ids=["within_2**53", "beyond_2**53"])
@pytest.mark.parametrize("metric", ["AURC", "SelectiveDice"])
def test_torch_metrics_integer_uncertainty(metric, beyond):
    """The torch metrics keep float64 states: integers beyond 2**53 are refused, smaller ones are exact."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("selectivekit.adapters.torch_metrics")
    rng = np.random.default_rng(14)
    offset = 2**60 if beyond else 2**52
    u = offset + rng.integers(0, 40, (3, 30))
    labels = rng.integers(0, 3, (3, 30))
    preds = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    if metric == "AURC":
        m, args = tm.AURC(), (u, preds == labels)
        want = sk.aurc(_dense_ranks(u), preds == labels)
    else:
        m, args = tm.SelectiveDice(num_classes=3, coverages=[0.8]), (preds, labels, u)
        want = sk.aurc_dice(preds, labels, _dense_ranks(u), num_classes=3)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    if beyond:
        with pytest.raises(ValueError, match=r"`uncertainty` holds integers beyond 2\*\*53"):
            m.update(*tensors)
        return
    m.update(*tensors)
    got = m.compute()
    got = got["aurc_dice"] if isinstance(got, dict) else got
    assert float(got) == pytest.approx(want, rel=1e-12)
