"""Never delete or overwrite what selectivekit did not write.

``evaluate``/``compare``/``merge --out`` replace a folder only when its manifest lists every entry in it,
unchanged; ``evaluate --save-state FILE`` replaces only a state file. Staging folders left by a kill or a full
disk are removed by the next run. Every refusal is one line on stderr that names the folder (or file) and
the entry, and leaves everything as it was.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from selectivekit import report as skreport
from selectivekit.cli import main
from tests.conftest import cli_env, cli_inputs, evaluate_argv, noisy_case_folders

K = 3


def _folders(root: Path, n_images: int = 3, shape=(6, 5, 4)) -> dict[str, Path]:
    return noisy_case_folders(root, 1, n_images, shape, error_rate=0.2, noise=0.5, num_classes=K)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: files by content, folders and links as None / their target."""
    entries: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            entries[name] = os.readlink(path).encode()
        else:
            entries[name] = path.read_bytes() if path.is_file() else None
    return entries


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _folders(tmp_path_factory.mktemp("data"))


def _add_notes(out: Path) -> str:
    (out / "notes.txt").write_text("my notes")
    return "notes.txt"


def _add_hidden(out: Path) -> str:
    (out / ".notes").write_text("my notes")
    return ".notes"


def _add_subfolder(out: Path) -> str:
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("mine")
    return "extra"


def _add_file_in_ours(out: Path) -> str:
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "mine.png").write_bytes(b"png")
    return "figures"


def _add_link(out: Path) -> str:
    (out / "link").symlink_to(out.parent)
    return "link"


def _edit_markdown(out: Path) -> str:
    with open(out / "report.md", "a") as handle:
        handle.write("\nmy comment\n")
    return "report.md"


def _drop_manifest(out: Path) -> str:
    (out / skreport.MANIFEST).unlink()
    return "curve.npz"  # the first entry in sorted order


def _break_manifest(out: Path) -> str:
    (out / skreport.MANIFEST).write_text("[" * 100_000)  # deeply nested JSON: refused, not a crash
    return "curve.npz"


CHANGES = [_add_notes, _add_hidden, _add_subfolder, _add_file_in_ours, _add_link, _edit_markdown,
           _drop_manifest, _break_manifest]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_evaluate_replaces_only_a_folder_of_its_own(tmp_path, data, capsys, change):
    out = tmp_path / "out"
    assert main(evaluate_argv(data, out)) == 0
    first = _snapshot(out)
    assert skreport.MANIFEST in first
    assert main(evaluate_argv(data, out, "--coverages", "0.5")) == 0  # ours: replaced
    assert _snapshot(out) != first
    entry = change(out)
    before = _snapshot(out)
    code, err = _run(evaluate_argv(data, out), capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("selectivekit evaluate: error: `--out` folder")
    assert repr(str(out)) in err and repr(entry) in err
    assert _snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_out_holding_another_tools_report_and_the_inputs_is_refused(tmp_path, capsys):
    experiment = tmp_path / "experiment"
    folders = _folders(experiment)
    (experiment / "report.json").write_text('{"tool": "another"}')
    before = _snapshot(experiment)
    code, err = _run(evaluate_argv(folders, experiment), capsys)
    assert code == 1 and err.count("\n") == 1
    assert "which selectivekit did not write" in err and repr(str(experiment)) in err
    assert _snapshot(experiment) == before


def test_compare_and_merge_replace_only_their_own_output(tmp_path, data, capsys):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(evaluate_argv(data, run_a)) == 0
    assert main(evaluate_argv(data, run_b, "--exact")) == 0
    comparison = tmp_path / "cmp"
    compare = ["compare", str(run_a), str(run_b), "--out", str(comparison)]
    assert main(compare) == 0
    assert main(compare) == 0  # its own output: replaced
    # an evaluation folder is not replaced by a comparison, nor the other way round
    code, err = _run(["compare", str(run_a), str(run_b), "--out", str(run_b)], capsys)
    assert code == 1 and "must differ from the input folder" in err
    other = tmp_path / "a_copy"
    assert main(evaluate_argv(data, other)) == 0
    code, err = _run(["compare", str(run_a), str(run_b), "--out", str(other)], capsys)
    assert code == 1 and err.count("\n") == 1 and "output of another selectivekit command" in err
    _add_notes(comparison)
    before = _snapshot(comparison)
    code, err = _run(compare, capsys)
    assert code == 1 and err.count("\n") == 1 and "'notes.txt', which selectivekit did not write" in err
    assert _snapshot(comparison) == before
    # merge
    state = tmp_path / "state.npz"
    assert main(evaluate_argv(data, tmp_path / "x", "--save-state", str(state))) == 0
    merged = tmp_path / "merged"
    assert main(["merge", str(state), "--out", str(merged)]) == 0
    assert main(["merge", str(state), "--out", str(merged)]) == 0
    _add_notes(merged)
    before = _snapshot(merged)
    code, err = _run(["merge", str(state), "--out", str(merged)], capsys)
    assert code == 1 and err.count("\n") == 1 and "'notes.txt', which selectivekit did not write" in err
    assert _snapshot(merged) == before


# --------------------------------------------------------------------------------------------------
# --save-state FILE


def _label_file(data: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "case_0.npy"
    target.write_bytes((data["label"] / "case_0.npy").read_bytes())
    return target


def _zip_file(data: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "other.npz"
    np.savez(target, header=np.frombuffer(b'{"format": "another"}', dtype=np.uint8))
    return target


def _text_file(data: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "notes.npz"
    target.write_text("my notes")
    return target


def _link_to_state(data: dict[str, Path], tmp_path: Path) -> Path:
    state = tmp_path / "real.npz"
    assert main(["evaluate", *cli_inputs(data), "--save-state", str(state)]) == 0
    link = tmp_path / "link.npz"
    link.symlink_to(state)
    return link


@pytest.mark.parametrize("target", [_label_file, _zip_file, _text_file, _link_to_state],
                         ids=lambda f: f.__name__)  # fmt: skip
def test_save_state_replaces_only_a_state_file(tmp_path, data, capsys, target):
    path = target(data, tmp_path)
    before = _snapshot(tmp_path)
    code, err = _run(["evaluate", *cli_inputs(data), "--save-state", str(path)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"selectivekit evaluate: error: `--save-state` file {str(path)!r} exists and is")
    assert _snapshot(tmp_path) == before


def test_save_state_replaces_an_earlier_state(tmp_path, data):
    path = tmp_path / "state.npz"
    assert main(["evaluate", *cli_inputs(data), "--save-state", str(path)]) == 0
    first = path.read_bytes()
    assert main(["evaluate", *cli_inputs(data), "--coverages", "0.5", "--save-state", str(path)]) == 0
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


# --------------------------------------------------------------------------------------------------
# staging left by a kill or a full disk

_KILL_WHILE_SAVING = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from selectivekit import shards
    from selectivekit.cli import main

    def write_state(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a state")
        os.kill(os.getpid(), signal.SIGKILL)

    shards.write_state = write_state
    main(sys.argv[1:])
    """
)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_kill_while_saving_a_state_leaves_nothing_after_the_next_run(tmp_path, data):
    path = tmp_path / "states" / "shard.npz"
    argv = ["evaluate", *cli_inputs(data), "--save-state", str(path)]
    command = [sys.executable, "-c", _KILL_WHILE_SAVING, *argv]
    killed = subprocess.run(command, env=cli_env(), timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not path.exists()
    (left,) = path.parent.iterdir()
    assert left.name.startswith(".shard.npz.partial-")
    assert main(argv) == 0
    assert [p.name for p in path.parent.iterdir()] == ["shard.npz"]


def test_a_full_disk_leaves_no_staging_folder(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "out"
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "selectivekit-staging.json":
            with open(self, "w"):  # the file is created, the write fails: an empty marker
                pass
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    code, err = _run(evaluate_argv(data, out), capsys)
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("marker", [None, b"", b'{"pid": 1'])
def test_a_staging_folder_with_no_readable_marker_is_removed_after_ten_minutes(tmp_path, data, marker):
    out = tmp_path / "out"
    left = tmp_path / ".out.partial-abcd1234"
    left.mkdir()
    if marker is not None:
        (left / "selectivekit-staging.json").write_bytes(marker)
    assert main(evaluate_argv(data, out)) == 0
    assert left.is_dir()  # it may be a run that is about to write its marker
    old = time.time() - 601
    for path in (left, *left.iterdir()):
        os.utime(path, (old, old))
    assert main(evaluate_argv(data, out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
