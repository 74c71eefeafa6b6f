"""Output that appears whole or not at all: every file and folder selectivekit and its trainers write.

[`atomic_file`][selectivekit.report.atomic_file] (and
[`atomic_write_text`][selectivekit.report.atomic_write_text]) replaces one file,
[`atomic_folder`][selectivekit.report.atomic_folder] one output folder (a report), and
[`check_out_folder`][selectivekit.report.check_out_folder] refuses a folder that holds anything selectivekit
did not write. The public names are re-exported by [`selectivekit.report`][selectivekit.report].

Why each piece is here (each one keeps a promise that tests/test_cli_kill.py or tests/test_cli_overwrite.py
checks):

- a staging folder beside the target, made by ``tempfile.mkdtemp`` and renamed into place: nothing is ever
  half-written at the target, and the rename cannot cross file systems;
- the marker file with the process id and host name in every staging folder, and the ten-minute and
  one-day ages: a later run removes what a killed run left behind, and never a staging folder that another
  running process still writes or that is not ours;
- the manifest of every output folder: ``--out`` replaces a folder only while it holds nothing that
  selectivekit did not write, unchanged;
- the one-call swap ``renameat2(RENAME_EXCHANGE)`` / ``renamex_np(RENAME_SWAP)`` through ctypes (the
  standard library has no rename that swaps two folders): a folder that already holds a report is the old
  report or the new one at every instant, even under SIGKILL; ``os.replace`` cannot replace a folder that
  is not empty, and two renames leave an instant with no report (where the system cannot swap, that is the
  fallback, and the next run puts the old report back);
- SIGINT, SIGTERM and SIGHUP held during the swap: a Ctrl-C never cuts it in two, and the command line can
  say whether the new report was written.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .signals import signals_held

__all__ = [
    "MANIFEST",
    "ReportError",
    "atomic_file",
    "atomic_folder",
    "atomic_write_text",
    "check_out_folder",
]


class ReportError(ValueError):
    """A report folder or file that cannot be used (the message says why)."""


def check_out_folder(out: Path, marker: str, inputs: Sequence[Path] = ()) -> None:
    """``out`` can receive a report: it differs from every input folder and is new, empty, or a previous
    output of the same command that nobody has changed since (see below).

    It first tidies up after runs that were killed while writing to ``out``: a previous report that such a
    run had moved aside is put back, and their staging folders (``.OUT.partial-*``, recognised by the
    marker file inside, only when the process that made them is no longer running) are removed.

    A folder that is not empty is replaced only when every entry in it was written by
    [`atomic_folder`][selectivekit.report.atomic_folder], as its manifest ``selectivekit-manifest.json``
    records (name, size and SHA-256 of every file, the subfolders), and the manifest lists ``marker`` (the
    main file of the same command). Any other entry, a changed file, a link, or a missing manifest raises a
    [`ReportError`][selectivekit.report.ReportError] that names the folder and the entry: a file we did
    not write is never deleted.
    """
    _recover_staging(out)
    resolved = out.resolve()
    for path in inputs:
        if resolved == path.resolve():
            msg = f"`out` must differ from the input folder {str(path)!r}."
            raise ReportError(msg)
    if out.exists() and not out.is_dir():
        msg = f"`out` must be a folder, got the file {str(out)!r}."
        raise ReportError(msg)
    if out.is_dir():
        _check_ours(out, marker)


MANIFEST = "selectivekit-manifest.json"
"""File name of the list of what [`atomic_folder`][selectivekit.report.atomic_folder] wrote in a folder."""
_MANIFEST_FORMAT = "selectivekit-output-manifest"


def _digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entries(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under ``folder`` (links not followed) as ``(relative POSIX path, path)``, sorted."""
    for path in sorted(folder.rglob("*")):
        yield path.relative_to(folder).as_posix(), path


def _write_manifest(folder: Path) -> None:
    """Record every file (size, SHA-256) and subfolder under ``folder`` in its manifest."""
    files: dict[str, dict[str, Any]] = {}
    folders: list[str] = []
    for name, path in _entries(folder):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            continue  # never written by us; the check of a later run will refuse it
        if path.is_dir():
            folders.append(name)
        else:
            files[name] = {"size": path.stat().st_size, "sha256": _digest(path)}
    manifest = {"format": _MANIFEST_FORMAT, "version": 1, "files": files, "folders": folders}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _check_ours(out: Path, marker: str) -> None:
    """Raise unless every entry of the folder ``out`` is in its manifest, unchanged, and ``marker`` is."""
    refuse = "give a new or empty folder, or move that entry away"
    entries = list(_entries(out))
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != _MANIFEST_FORMAT:
            raise ValueError(manifest.get("format"))
        files, folders = dict(manifest["files"]), set(manifest["folders"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        first = next((name for name, _ in entries if name != MANIFEST), entries[0][0])
        msg = (
            f"`out` folder {str(out)!r} holds {first!r}, which selectivekit did not write (the folder has no "
            f"valid {MANIFEST} of an earlier run); {refuse}."
        )
        raise ReportError(msg) from None
    for name, path in entries:
        if name == MANIFEST:
            continue
        if path.is_symlink():
            known = False
        elif path.is_dir():
            known = name in folders
        else:
            record = files.get(name)
            known = (
                isinstance(record, dict)
                and path.is_file()
                and record.get("size") == path.stat().st_size
                and record.get("sha256") == _digest(path)
            )
            if not known and record is not None:
                msg = (
                    f"`out` folder {str(out)!r} holds {name!r}, which was changed after selectivekit wrote "
                    f"it; {refuse}."
                )
                raise ReportError(msg)
        if not known:
            msg = f"`out` folder {str(out)!r} holds {name!r}, which selectivekit did not write; {refuse}."
            raise ReportError(msg)
    if marker not in files:
        msg = (
            f"`out` folder {str(out)!r} is the output of another selectivekit command (no {marker}); "
            "give a new or empty folder."
        )
        raise ReportError(msg)


@contextmanager
def atomic_folder(out: Path, marker: str, *, on_commit: Callable[[], None] | None = None) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` only if the block completes.

    The new report is written in ``.OUT.partial-XXXX/`` beside ``out``; ``out`` keeps the previous report
    until the block has completed. Then one rename swaps the two (Linux ``renameat2(RENAME_EXCHANGE)``,
    macOS ``renamex_np(RENAME_SWAP)``), so that at every instant ``out`` is the complete previous report or
    the complete new one, whatever kills the process (SIGKILL included). Where the file system cannot swap,
    the previous report is renamed into the staging folder and the new one into its place; a failure or a
    signal between the two renames puts the previous one back, and a run killed there leaves it in the
    staging folder, from where the next [`check_out_folder`][selectivekit.report.check_out_folder] (or
    ``atomic_folder``) of ``out`` puts it back. SIGINT, SIGTERM and SIGHUP are held during the swap and
    delivered after it. ``on_commit`` is called right after the swap (before a held signal is delivered):
    from then on ``out`` holds the new report. Before the swap, the manifest of the new folder
    (``selectivekit-manifest.json``) records what the block wrote, and ``out`` is checked again with
    [`check_out_folder`][selectivekit.report.check_out_folder]: a later run replaces the folder only while it
    holds nothing else.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover_staging(out)
    staging = _new_staging(out)
    try:
        new = staging / _NEW
        new.mkdir()
        yield new
        _write_manifest(new)
        check_out_folder(out, marker)  # nothing appeared there while we worked
        with signals_held(*_HELD):
            _swap_into(new, out, staging / _PREVIOUS)
            if on_commit is not None:
                on_commit()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(
    path: Path, *, on_commit: Callable[[], None] | None = None, check: Callable[[], None] | None = None
) -> Iterator[Path]:
    """A temporary file path whose file becomes ``path`` only if the block completes.

    The file is written in a staging folder beside ``path`` (``.NAME.partial-XXXX/``) and renamed onto
    ``path``: ``path`` is the complete previous file or the complete new one at every instant. Staging
    folders of runs that were killed are removed by the next call for the same ``path``. ``check`` (if given)
    is called right before the rename: it may raise to keep ``path`` as it is. ``on_commit`` as in
    [`atomic_folder`][selectivekit.report.atomic_folder].
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover_staging(path)
    staging = _new_staging(path)
    try:
        tmp = staging / path.name
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if check is not None:
            check()
        with signals_held(*_HELD):
            os.replace(tmp, path)
            if on_commit is not None:
                on_commit()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: Path, text: str, *, on_commit: Callable[[], None] | None = None) -> None:
    """Write ``text`` to ``path`` so that the file appears whole or not at all (see
    [`atomic_file`][selectivekit.report.atomic_file])."""
    with atomic_file(path, on_commit=on_commit) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def _recover_staging(out: Path) -> list[Path]:
    """Tidy up after runs that were killed while writing ``out``; returns the staging folders removed.

    A staging folder is ours when it is named ``.OUT.partial-*``, lies beside ``out`` and holds the marker
    file that [`atomic_folder`][selectivekit.report.atomic_folder] writes first (with the process id and
    host name). It is removed only when that process is no longer running on this host (on Windows, or when
    the marker cannot be read: when it is more than a day old). If ``out`` is missing and such a folder
    holds the previous report that its run had moved aside, that report is renamed back to ``out`` first.
    """
    parent = out.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.glob(f"{glob.escape(_staging_prefix(out))}*")):
        if not path.is_dir() or path.is_symlink() or not _abandoned(path):
            continue
        previous = path / _PREVIOUS
        if previous.is_dir() and not os.path.lexists(out):
            try:
                os.rename(previous, out)  # a swap of two renames that was killed half way
            except OSError:
                continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


_STAGING_MARKER = "selectivekit-staging.json"  # first file of every staging folder: what makes it ours
_NEW, _PREVIOUS = "new", "previous"  # inside a staging folder: the new output; the old one on its way out
_STALE_AFTER_S = 86_400.0  # a marker that cannot be checked: its folder is abandoned after a day
# a staging folder with no readable marker and nothing else in it: the marker is written right after the
# folder is made, so a folder in that state for ten minutes was left by a run that died (or hit a full disk)
_UNCLAIMED_AFTER_S = 600.0


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _new_staging(out: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "target": out.name}
    try:
        (staging / _STAGING_MARKER).write_text(json.dumps(owner), encoding="utf-8")
    except BaseException:  # a full disk leaves an empty marker: remove the folder before the error goes on
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _abandoned(staging: Path) -> bool:
    """The staging folder is ours and the process that made it is gone."""
    marker = staging / _STAGING_MARKER
    try:
        entries = os.listdir(staging)
    except OSError:
        return False
    if not marker.is_file():
        # killed between mkdtemp and writing the marker: an empty folder with our prefix
        return not entries and _older_than(staging, _UNCLAIMED_AFTER_S)
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        # a marker cut short (a kill, a full disk): with nothing beside it, the folder held no report yet
        alone = entries == [_STAGING_MARKER]
        return _older_than(marker, _UNCLAIMED_AFTER_S if alone else _STALE_AFTER_S)
    if host != socket.gethostname() or os.name != "posix":
        return _older_than(marker, _STALE_AFTER_S)
    return not _running(pid)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another block of this process (a thread) may still be writing it
    try:
        os.kill(pid, 0)  # POSIX: signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _swap_into(new: Path, out: Path, aside: Path) -> None:
    """Make ``new`` be ``out``; whatever was at ``out`` ends up at ``new`` (one swap) or ``aside``."""
    if not os.path.lexists(out):
        os.rename(new, out)  # fails if something appeared at ``out`` meanwhile: nothing is lost
        return
    if _exchange(new, out):
        return
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)  # put the previous report back
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS stdio.h
_AT_FDCWD = -100
_CANNOT_SWAP = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}
#: Signals received during a swap or a rename are delivered after it, so that it is never cut in two.
_HELD = ("SIGINT", "SIGTERM", "SIGHUP")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one system call; ``False`` where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            result = libc.renameat2(
                _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
            )
        elif sys.platform == "darwin":
            result = libc.renamex_np(os.fsencode(a), os.fsencode(b), ctypes.c_uint(_RENAME_SWAP))
        else:
            return False
    except (OSError, AttributeError, TypeError):  # no C library to load, or no such function in it
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_SWAP:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
