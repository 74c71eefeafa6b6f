"""Every refusal of the command line is one line that names the argument or the file, never an "internal
error": hostile option values, threshold files, reports and shard states, label and probability files.

Each input is made by editing one field of a genuine file (written by the command itself) in a fresh copy.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from selectivekit.cli import main
from tests.conftest import LONG_DOUBLE_WIDE, evaluate_argv, npy_case_folders, run_cli

K = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Input folders, two evaluations (`a`, `b`), a threshold file and a shard state."""
    root = tmp_path_factory.mktemp("work")
    rng = np.random.default_rng(5)
    for role in ("pred", "label", "unc"):
        (root / role).mkdir()
    for i in range(4):
        label = rng.integers(0, K, size=(6, 5, 4)).astype(np.uint8)
        wrong = rng.random(label.shape) < 0.2
        np.save(root / "pred" / f"c{i}_pred.npy", np.where(wrong, (label + 1) % K, label).astype(np.uint8))
        np.save(root / "label" / f"c{i}.npy", label)
        np.save(root / "unc" / f"c{i}_unc.npy", (rng.random(label.shape) + 0.5 * wrong).astype(np.float32))
    inputs = _inputs(root)
    assert main(["evaluate", *inputs, "--out", str(root / "a")]) == 0
    assert main(["evaluate", *inputs, "--exact", "--out", str(root / "b")]) == 0
    assert main(["calibrate", *inputs, "--max-dice-loss", "0.3", "--out", str(root / "threshold.json")]) == 0
    assert main(["evaluate", *inputs, "--save-state", str(root / "state.npz")]) == 0
    for run in ("ci_a", "ci_b"):  # with bootstrap_state.npz, for compare's paired tests
        assert main(["evaluate", *inputs, "--exact", "--ci", "0.9", "--out", str(root / run)]) == 0
    return root


def _inputs(root: Path) -> list[str]:
    roles = {"--pred": "pred", "--label": "label", "--uncertainty": "unc"}
    return [
        *(x for flag, role in roles.items() for x in (flag, str(root / role))),
        "--num-classes",
        str(K),
        "--quiet",
    ]


# --------------------------------------------------------------------------------------------------
# hostile inputs, each: (what it edits) -> argv


def _max_memory_huge(work: Path, tmp: Path) -> tuple[list[str], str]:
    return [
        "evaluate",
        *_inputs(work),
        "--max-memory",
        "1" + "0" * 400,
        "--out",
        str(tmp / "o"),
    ], "--max-memory"


def _max_memory_exponent(work: Path, tmp: Path) -> tuple[list[str], str]:
    return ["evaluate", *_inputs(work), "--max-memory", "1e400", "--out", str(tmp / "o")], "--max-memory"


def _max_voxels_huge(work: Path, tmp: Path) -> tuple[list[str], str]:
    return ["evaluate", *_inputs(work), "--max-voxels", "1e400", "--out", str(tmp / "o")], "--max-voxels"


def _threshold_file(work: Path, tmp: Path, edit) -> tuple[list[str], str]:
    path = tmp / "threshold.json"
    data = json.loads((work / "threshold.json").read_text())
    path.write_text(edit(data))
    return ["evaluate", *_inputs(work), "--threshold", str(path), "--out", str(tmp / "o")], str(path)


def _threshold_huge(work: Path, tmp: Path):
    return _threshold_file(work, tmp, lambda d: json.dumps({**d, "threshold": 10**400}))


def _threshold_calibration_number(work: Path, tmp: Path):
    return _threshold_file(work, tmp, lambda d: json.dumps({**d, "calibration": 5}))


def _threshold_nested(work: Path, tmp: Path):
    return _threshold_file(work, tmp, lambda d: "[" * 100_000 + "]" * 100_000)


def _report(work: Path, tmp: Path, edit) -> tuple[list[str], str]:
    run = tmp / "b"
    shutil.copytree(work / "b", run)
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(edit(report))
    return ["compare", str(work / "a"), str(run), "--out", str(tmp / "o")], str(run / "report.json")


def _report_row_without_threshold(work: Path, tmp: Path):
    return _report(
        work, tmp, lambda r: json.dumps({**r, "coverages": [{**r["coverages"][0], "threshold": None}]})
    )


def _report_row_missing_threshold(work: Path, tmp: Path):
    def edit(report):
        del report["coverages"][1]["threshold"]
        return json.dumps(report)

    return _report(work, tmp, edit)


def _report_image_without_dice(work: Path, tmp: Path):
    def edit(report):
        report["per_image"][2]["coverages"][0]["dice"] = "high"
        return json.dumps(report)

    return _report(work, tmp, edit)


def _report_nested(work: Path, tmp: Path):
    return _report(work, tmp, lambda r: "{" + '"a":[' * 50_000)


def _report_a_list(work: Path, tmp: Path):
    return _report(work, tmp, lambda r: "[1, 2]")


def _state(work: Path, tmp: Path, edit) -> tuple[list[str], str]:
    with np.load(work / "state.npz") as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(arrays["header"].tobytes())
    header_text = edit(header, arrays)
    arrays["header"] = np.frombuffer(header_text.encode(), dtype=np.uint8)
    path = tmp / "state.npz"
    np.savez(path, **arrays)
    return ["merge", str(path), "--out", str(tmp / "o")], str(path)


def _state_without_shard(work: Path, tmp: Path):
    return _state(work, tmp, lambda h, a: json.dumps({k: v for k, v in h.items() if k != "shard"}))


def _state_more_names(work: Path, tmp: Path):
    return _state(work, tmp, lambda h, a: json.dumps({**h, "names": [*h["names"], "extra"]}))


def _state_more_names_and_voxels(work: Path, tmp: Path):
    return _state(
        work, tmp, lambda h, a: json.dumps({**h, "names": [*h["names"], "x"], "voxels": [*h["voxels"], 9]})
    )


def _state_shard_text(work: Path, tmp: Path):
    return _state(work, tmp, lambda h, a: json.dumps({**h, "shard": "0/1"}))


def _state_nested(work: Path, tmp: Path):
    return _state(work, tmp, lambda h, a: "[" * 100_000)


def _state_huge_array(work: Path, tmp: Path) -> tuple[list[str], str]:
    """An array whose header declares 8 TiB, in a file of a few kB."""
    path = tmp / "state.npz"
    _forged_array(work / "state.npz", path, "acc_raw_u.npy", (2**40,))
    return ["merge", str(path), "--out", str(tmp / "o")], str(path)


def _forged_array(source: Path, target: Path, member: str, shape: tuple[int, ...]) -> None:
    """``source`` with the array ``member`` replaced by a header that declares ``shape`` (and no data)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            data = archive.read(name)
            if name == member:
                header = io.BytesIO()
                dtype = {"descr": "<f8", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(header, dtype)
                data = header.getvalue()
            out.writestr(name, data)


def _bootstrap_state(work: Path, tmp: Path, edit) -> tuple[list[str], str]:
    run = tmp / "ci_b"
    shutil.copytree(work / "ci_b", run)
    state = run / "bootstrap_state.npz"
    edit(work / "ci_b" / "bootstrap_state.npz", state)
    return ["compare", str(work / "ci_a"), str(run), "--out", str(tmp / "o")], str(state)


def _bootstrap_state_huge_array(work: Path, tmp: Path):
    def edit(source: Path, target: Path) -> None:
        with zipfile.ZipFile(source) as archive:
            last = archive.namelist()[-1]
        _forged_array(source, target, last, (2**40,))  # 8 TiB of float64

    return _bootstrap_state(work, tmp, edit)


def _bootstrap_state_not_an_archive(work: Path, tmp: Path):
    return _bootstrap_state(work, tmp, lambda source, target: target.write_bytes(b"PK\x03\x04 cut short"))


HOSTILE = [
    (_max_memory_huge, 2),
    (_max_memory_exponent, 2),
    (_max_voxels_huge, 2),
    (_threshold_huge, 1),
    (_threshold_calibration_number, 1),
    (_threshold_nested, 1),
    (_report_row_without_threshold, 1),
    (_report_row_missing_threshold, 1),
    (_report_image_without_dice, 1),
    (_report_nested, 1),
    (_report_a_list, 1),
    (_state_without_shard, 1),
    (_state_more_names, 1),
    (_state_more_names_and_voxels, 1),
    (_state_shard_text, 1),
    (_state_nested, 1),
    (_state_huge_array, 1),
    (_bootstrap_state_huge_array, 1),
    (_bootstrap_state_not_an_archive, 1),
]


@pytest.mark.parametrize(("make", "code"), HOSTILE, ids=[h[0].__name__.strip("_") for h in HOSTILE])
def test_hostile_input_is_one_line_naming_it(work, tmp_path, capsys, make, code):
    argv, named = make(work, tmp_path)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "internal error" not in err and "please report" not in err
    assert err.startswith(f"selectivekit {argv[0]}: error: ")
    assert (repr(named) if named.startswith(str(tmp_path)) else f"`{named}`") in err
    assert len(err) < 400
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# label values beyond every integer type, and probabilities rounded when stored


HUGE_LABELS = [
    *[(value, np.float64) for value in (1e300, -1e300, 1e19, -9.3e18, 2.0**63)],
    *[(value, np.float32) for value in (1e19, -9.3e18, 2.0**63, float(np.finfo(np.float32).max))],
    (float(np.finfo(np.float16).max), np.float16),  # within int64: an ordinary out-of-range label
]


@pytest.mark.parametrize(("value", "dtype"), HUGE_LABELS)
def test_a_huge_float_label_is_named_with_its_value(work, tmp_path, capsys, value, dtype):
    labels = tmp_path / "label"
    shutil.copytree(work / "label", labels)
    array = np.load(labels / "c1.npy").astype(dtype)
    array[1, 2, 3] = value
    np.save(labels / "c1.npy", array)
    argv = ["evaluate", *_inputs(work), "--label", str(labels), "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # no NumPy warning before it
    if abs(value) >= 2.0**63:
        assert f"`--label` file 'c1.npy' holds the label {value:g}, beyond any integer type" in err
    else:
        assert f"`--label` file 'c1.npy' holds labels outside [0, 3) for --num-classes 3: {int(value)}" in err
    assert "-9223372036854775808" not in err


def _probs_folder(root: Path, decimals: int, seed: int) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / f"probs{decimals}"
    folder.mkdir()
    stored = []
    for i in range(4):
        p = rng.dirichlet(np.ones(K), size=(6, 5, 4)).astype(np.float32)
        p = np.round(p, decimals)
        np.save(folder / f"c{i}_probs.npy", np.moveaxis(p, -1, 0))
        stored.append(p)
    return folder, stored


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("decimals", [1, 2, 3, 4])
def test_probabilities_have_one_tolerance_and_one_message(work, tmp_path, capsys, decimals, seed):
    folder, stored = _probs_folder(tmp_path, decimals, seed)
    out = tmp_path / "o"
    argv = ["evaluate", "--label", str(work / "label"), "--probs", str(folder), "--num-classes", str(K)]
    capsys.readouterr()
    code = main([*argv, "--quiet", "--exact", "--out", str(out)])
    err = capsys.readouterr().err
    worst = max(float(np.max(np.abs(p.sum(axis=-1, dtype=np.float64) - 1))) for p in stored)
    if worst > 1e-2:  # the reader's tolerance: refused by the reader, naming the file
        assert code == 1 and err.count("\n") == 1
        assert "`--probs` file 'c" in err and "must sum to 1 along the class axis 0 within 0.01" in err
        return
    assert code == 0, err
    from selectivekit.segmentation import aurc_dice

    labels = [np.load(work / "label" / f"c{i}.npy") for i in range(4)]
    preds = [np.argmax(p, axis=-1) for p in stored]
    # the reference uncertainty: the sum of the non-maximal probabilities, as stored
    us = [np.sort(p, axis=-1)[..., :-1].sum(axis=-1, dtype=np.float32) for p in stored]
    report = json.loads((out / "report.json").read_text())
    assert report["aurc_dice"] == pytest.approx(aurc_dice(preds, labels, us, num_classes=K), abs=1e-12)


# --- huge --num-classes, a bad --seed, long double maps -----------------------------------------------------


@pytest.mark.parametrize("k", ["1000000", str(2**62)])
@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_huge_num_classes_is_one_line(tmp_path, k, command):
    for name in ("p", "l", "u"):
        (tmp_path / name).mkdir()
    argv = [
        command,
        "--pred",
        str(tmp_path / "p"),
        "--label",
        str(tmp_path / "l"),
        "--uncertainty",
        str(tmp_path / "u"),
        "--num-classes",
        k,
        "--out",
        str(tmp_path / "out"),
    ]
    if command == "calibrate":
        argv += ["--max-dice-loss", "0.1"]
    code, err = run_cli(argv)
    assert code == 2
    assert err.count("\n") == 1 and "--num-classes" in err and "internal error" not in err
    assert not (tmp_path / "out").exists()


def test_bad_seed_is_named(tmp_path):
    code, err = run_cli(
        ["compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"), "--seed", "-3"]
    )
    assert code == 2 and "`--seed` must be an integer >= 0" in err


@pytest.mark.skipif(not LONG_DOUBLE_WIDE, reason="long double is float64 on this platform")
@pytest.mark.parametrize("extra", [[], ["--exact"], ["--max-memory", "0"]], ids=["default", "exact", "grid"])
def test_cli_long_double_maps_refused(tmp_path, extra):
    rng = np.random.default_rng(6)
    labels = [rng.integers(0, 3, (5, 6)) for _ in range(2)]
    us = [np.longdouble(1) + np.arange(30).reshape(5, 6) * np.finfo(np.longdouble).eps for _ in labels]
    folders = npy_case_folders(tmp_path / "data", labels, labels, us)
    code, err = run_cli(evaluate_argv(folders, tmp_path / "out", *extra))
    assert code == 1 and err.count("\n") == 1 and "(long double)" in err, err
    assert not (tmp_path / "out").exists()
