"""A report is never lost: kills at random moments of a real ``selectivekit evaluate``, the swap of a new
report for an old one, the clean-up of staging folders, signals and one-line errors.

The kill test runs the command line in a subprocess on small NumPy folders, sends SIGKILL, SIGTERM or
SIGINT after a random (seeded) delay, and checks the output folder file by file against the two complete
reports written beforehand by uninterrupted runs: it must equal the previous one or the new one, byte for
byte. The next run must leave no staging folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from selectivekit import report as skreport
from selectivekit._lib import atomic
from selectivekit.cli import main
from tests.conftest import ROOT, cli_command, cli_env, evaluate_argv, noisy_case_folders

K = 3
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _folders(root: Path, n_images: int = 4, shape=(12, 10, 8)) -> dict[str, Path]:
    return noisy_case_folders(root, 0, n_images, shape, error_rate=0.15, noise=0.6, num_classes=K)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content); {} when it does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _staging(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300, check=False
    )


# --------------------------------------------------------------------------------------------------
# the kill test


@posix_only
@pytest.mark.slow
def test_kill_at_random_moments_never_loses_the_report(tmp_path):
    folders = _folders(tmp_path / "data")
    old_args = ("--coverages", "0.9,0.8")
    new_args = ("--coverages", "0.95,0.7")
    reference_old, reference_new = tmp_path / "ref-old", tmp_path / "ref-new"
    assert _run(*evaluate_argv(folders, reference_old, *old_args)).returncode == 0
    started = time.monotonic()
    done = _run(*evaluate_argv(folders, reference_new, *new_args))
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    old, new = _snapshot(reference_old), _snapshot(reference_new)
    assert old != new and "report.json" in old and "report.json" in new

    rng = np.random.default_rng(20261201)
    out = tmp_path / "runs" / "report"
    out.parent.mkdir()
    # a third of the signals at any moment of the run, the others while the report is being written:
    # from the moment its staging folder appears beside OUT, so that the swap is hit too
    kinds = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    trials = [(sig, when) for when in ("any", "writing", "writing") for sig in kinds]
    outcomes = []
    for sig, when in trials:
        if _snapshot(out) != old:  # every trial replaces the old report with the new one
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(reference_old, out)
        before = set(_staging(out.parent))
        process = subprocess.Popen(
            cli_command(*evaluate_argv(folders, out, *new_args)),
            cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if when == "writing":
            while process.poll() is None and not set(_staging(out.parent)) - before:
                time.sleep(0.002)
            delay = float(rng.uniform(0.0, 0.5))
        else:
            delay = float(rng.uniform(0.0, 1.1 * duration))
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(sig)
        _, err = process.communicate(timeout=300)
        now = _snapshot(out)
        left = len(_staging(out.parent))
        outcomes.append((sig.name, when, round(delay, 3), process.returncode, now == new, left))
        assert now in (old, new), (sig.name, when, delay, sorted(now))
        if process.returncode in (130, 143):  # our handler ran: one line, never a traceback
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            if "nothing was written" in err:
                assert now == old
        if process.returncode == 0:
            assert now == new
    # the next run tidies up whatever the killed runs left, and writes the new report
    done = _run(*evaluate_argv(folders, out, *new_args))
    assert done.returncode == 0, done.stderr
    assert _snapshot(out) == new
    assert _staging(out.parent) == [], outcomes


# --------------------------------------------------------------------------------------------------
# SIGKILL at chosen moments: staging folders left behind are removed by the next run

_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from selectivekit import report
    from selectivekit._lib import atomic

    out, moment = Path(sys.argv[1]), sys.argv[2]
    if moment == "between-renames":  # a file system that cannot swap in one rename
        atomic._exchange = lambda a, b: False
        real = os.replace
        def replace(a, b):
            real(a, b)
            os.kill(os.getpid(), signal.SIGKILL)  # after the first of the two renames
        os.replace = replace
    with report.atomic_folder(out, "report.json") as staging:
        (staging / "report.json").write_text("{\\"new\\": true}")
        if moment == "writing":
            (staging / "report.md").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _previous_report(out: Path) -> dict[str, bytes]:
    """A report folder written by an earlier run (with its manifest: only such a folder is replaced)."""
    with skreport.atomic_folder(out, "report.json") as staging:
        (staging / "report.json").write_text('{"old": true}\n')
        (staging / "report.md").write_text("# old\n")
    return _snapshot(out)


def _report_files(folder: Path) -> dict[str, bytes]:
    """``_snapshot`` without the manifest."""
    return {name: data for name, data in _snapshot(folder).items() if name != skreport.MANIFEST}


@posix_only
@pytest.mark.parametrize("moment", ["writing", "between-renames"])
def test_a_killed_run_leaves_the_previous_report_and_the_next_run_tidies_up(tmp_path, moment):
    out = tmp_path / "report"
    previous = _previous_report(out)
    script = [sys.executable, "-c", _KILL_SCRIPT, str(out), moment]
    killed = subprocess.run(script, cwd=ROOT, env=cli_env(), timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL
    left = _staging(tmp_path)
    assert len(left) == 1 and left[0].startswith(".report.partial-")
    if moment == "writing":
        assert _snapshot(out) == previous
    else:  # killed while the previous report was moved aside: `out` is missing until the next run
        assert not out.exists()
    skreport.check_out_folder(out, "report.json")  # what the next run does first
    assert _snapshot(out) == previous
    assert _staging(tmp_path) == []


def test_staging_folders_of_others_are_kept(tmp_path):
    out = tmp_path / "report"
    previous = _previous_report(out)
    foreign = tmp_path / ".report.partial-mine"  # our name, but no marker: not ours
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    running = tmp_path / ".report.partial-live"  # ours, but its process is still running
    running.mkdir()
    marker = {"pid": os.getppid(), "host": socket.gethostname(), "target": "report"}
    (running / "selectivekit-staging.json").write_text(json.dumps(marker))
    skreport.check_out_folder(out, "report.json")
    assert (foreign / "notes.txt").read_text() == "keep"
    assert running.is_dir()
    assert _snapshot(out) == previous


# --------------------------------------------------------------------------------------------------
# the swap: one rename where the system can, a rollback in every case


def _write(staging: Path, text: str) -> None:
    (staging / "report.json").write_text(text)


@pytest.mark.parametrize("one_rename", [True, False])
def test_swap_replaces_the_previous_report(tmp_path, monkeypatch, one_rename):
    if not one_rename:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "report"
    _previous_report(out)
    committed = []
    with skreport.atomic_folder(out, "report.json", on_commit=lambda: committed.append(1)) as staging:
        _write(staging, "new")
    assert _report_files(out) == {"report.json": b"new"}
    assert committed == [1]
    assert _staging(tmp_path) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux")
def test_swap_is_one_rename_on_linux(tmp_path, monkeypatch):
    import os as real_os

    out = tmp_path / "report"
    _previous_report(out)
    renames = []
    monkeypatch.setattr(real_os, "replace", lambda *a: renames.append(a))
    monkeypatch.setattr(real_os, "rename", lambda *a: renames.append(a))
    with skreport.atomic_folder(out, "report.json") as staging:
        _write(staging, "new")
    assert renames == []  # neither os.replace nor os.rename: the swap was the one renameat2 call
    assert _report_files(out) == {"report.json": b"new"}


def test_interrupt_between_the_two_renames_puts_the_previous_report_back(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "report"
    previous = _previous_report(out)
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the new report into place: Ctrl-C arrives instead
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt), skreport.atomic_folder(out, "report.json") as staging:
        _write(staging, "new")
    monkeypatch.setattr(os, "replace", real)
    assert _snapshot(out) == previous
    assert _staging(tmp_path) == []


def test_cli_says_nothing_was_written_only_when_true(tmp_path, monkeypatch, capsys):
    # The test sends itself SIGINT, so it needs Python's SIGINT handler and SIGINT unblocked in this thread.
    # In one full-suite run (2026-12-06) the signal was not delivered here (exit 0) though the test passes
    # alone and after every file run before it that was tried: the state is set here, not assumed.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        _says_nothing_was_written_only_when_true(tmp_path, monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _says_nothing_was_written_only_when_true(tmp_path, monkeypatch, capsys):
    folders = _folders(tmp_path / "data", n_images=2, shape=(5, 4, 3))
    out = tmp_path / "out"
    assert main(evaluate_argv(folders, out)) == 0
    previous = _snapshot(out)
    capsys.readouterr()
    # Ctrl-C between the two renames of a file system that cannot swap: the previous report is back
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    assert main(evaluate_argv(folders, out, "--coverages", "0.5")) == 130
    err = capsys.readouterr().err
    assert err == "selectivekit evaluate: interrupted; nothing was written.\n"
    assert _snapshot(out) == previous
    monkeypatch.setattr(os, "replace", real)
    # a signal that arrives during the swap is held until the new report is in place, and the message
    # says so
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: os.kill(os.getpid(), signal.SIGINT) or False)
    assert main(evaluate_argv(folders, out, "--coverages", "0.5")) == 130
    err = capsys.readouterr().err
    assert err == f"selectivekit evaluate: interrupted after {out} was written in full.\n"
    assert json.loads((out / "report.json").read_text())["coverages"][0]["requested"] == 0.5
    assert _staging(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# signals and start-up


@posix_only
def test_sigterm_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys):
    from selectivekit.cli import _reading as reading

    folders = _folders(tmp_path / "data", n_images=2, shape=(5, 4, 3))
    original = reading.read_case

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(reading, "read_case", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(evaluate_argv(folders, out)) == 143
    assert capsys.readouterr().err == "selectivekit evaluate: terminated; nothing was written.\n"
    assert not out.exists() and _staging(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # main puts the previous handler back


def test_ctrl_c_during_start_up_prints_one_line(monkeypatch, capsys):
    from selectivekit import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_build_parser", interrupted)
    assert main(["evaluate", "--help"]) == 130
    assert capsys.readouterr().err == "selectivekit: interrupted; nothing was written.\n"


# --------------------------------------------------------------------------------------------------
# one-line errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--num-classes", "x"], "selectivekit evaluate: error: argument --num-classes:"),
        ([], "selectivekit: error: the following arguments are required: COMMAND"),
        (["nope"], "selectivekit: error: argument COMMAND: invalid choice: 'nope'"),
        (["compare", "a"], "selectivekit compare: error: the following arguments are required: RUN_B"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.rstrip().endswith("--help)")
    assert len(err.splitlines()) == 1 and "usage:" not in err


def test_multi_line_library_messages_are_folded(tmp_path, capsys):
    import nibabel

    folders = {name: tmp_path / name for name in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir()
    volume = np.zeros((6, 5, 4), dtype=np.uint8)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), folders["pred"] / "c_pred.nii")
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), folders["label"] / "c.nii")
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), folders["unc"] / "c_unc.nii")
    cut = folders["unc"] / "c_unc.nii"
    cut.write_bytes(cut.read_bytes()[:400])  # header only: nibabel's message has two lines
    assert main(evaluate_argv(folders, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith("selectivekit evaluate: error: cannot read 'c_unc.nii'")
    assert "could the file be damaged?" in err and len(err.splitlines()) == 1


@posix_only
def test_ctrl_c_while_the_console_command_imports_prints_one_line():
    """SIGINT at several moments of the console command's start-up, the imports included.

    The child runs what the installed ``selectivekit`` script runs (``selectivekit_entry.selectivekit``)
    and says when it is about to call it; a signal before that point falls into the interpreter's own
    start-up or the import of the 30-line entry module, which no package code can handle."""
    code = (
        "import sys, selectivekit_entry; print('ready', flush=True); "
        "sys.argv = ['selectivekit', 'evaluate', '--help']; sys.exit(selectivekit_entry.selectivekit())"
    )
    seen_start = False
    for delay in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        if proc.returncode == 130:
            assert err.count("\n") == 1 and "nothing was written" in err, err
            seen_start = seen_start or "while starting" in err
        else:  # it finished before the signal arrived
            assert proc.returncode == 0 and "usage" in out
    assert seen_start, "no signal arrived during the imports, so nothing was tested"
