"""Ctrl-C ends a parallel ``selectivekit evaluate --workers 2`` promptly, with one line and nothing left.

A terminal sends SIGINT to the whole process group: the parent, the forkserver and the workers. The command
runs in a session of its own, and the signal goes to that group at moments from the start of the workers
to the middle of their chunks. Every try must end within the timeout (no deadlock in the pool's shutdown),
with exit status 130, the one line that says nothing was written (no worker traceback), no output folder
and no process of the session left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_command_from_a_terminal, cli_env, evaluate_argv, noisy_case_folders

K = 3
TRIES = 10

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc"),
]


def _folders(root: Path, n_images: int = 16, shape=(48, 48, 40)) -> dict[str, Path]:
    return noisy_case_folders(
        root, 3, n_images, shape, error_rate=0.2, noise=0.5, num_classes=K, ext=".nii.gz"
    )


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (still running, zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_ctrl_c_ends_a_parallel_run_with_one_line(tmp_path):
    folders = _folders(tmp_path / "data")
    interrupted = 0
    for attempt in range(TRIES):
        out = tmp_path / f"out{attempt}"
        command = cli_command_from_a_terminal(*evaluate_argv(folders, out, "--workers", "2", num_classes=K))
        with subprocess.Popen(
            command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        ) as process:
            # the parent, the forkserver and at least one worker are running (or the run already ended)
            _wait_for(lambda: len(_session(process.pid)) >= 3 or process.poll() is not None, 120)
            time.sleep(0.05 * attempt)  # from the workers' start to the middle of their chunks
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                if attempt % 3 == 2:  # pressed again, as an impatient user does
                    time.sleep(0.05)
                    os.killpg(process.pid, signal.SIGINT)
            try:
                stdout, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                pytest.fail(f"try {attempt}: still running 60 s after Ctrl-C (a deadlock)")
        err = stderr.decode()
        if process.returncode == 0:  # finished before the signal: the report is complete
            assert (out / "report.json").is_file()
            continue
        interrupted += 1
        # 130, or killed by the second SIGINT once the line was printed (a shell shows 130 for both)
        assert process.returncode in (130, -signal.SIGINT), err
        assert err == "selectivekit evaluate: interrupted; nothing was written.\n"
        assert stdout == b""
        assert not out.exists()
        assert _wait_for(lambda: _session(process.pid) == [], 30), "a process of the run outlived it"
    assert interrupted >= TRIES // 2
