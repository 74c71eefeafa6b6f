"""Reading and accumulating the cases of ``selectivekit evaluate --workers N`` in N processes.

The cases are cut into contiguous chunks in their sorted order. Each worker process reads the files of one
chunk with [`selectivekit.io.read_case`][selectivekit.io.read_case], builds an accumulator over them and
returns it; the parent merges the accumulators in the order of the chunks with their public ``merge``. The
merged accumulator therefore holds the same images in the same order as one process that read every case
itself, and gives the same numbers: the state is counts (sums of integers), maxima and per-image records,
none of which depends on how the cases were grouped.

The processes are started with ``forkserver`` where the platform has it, else ``spawn``: a worker never
inherits the parent's threads or open files, only the arguments it is sent.

Ctrl-C is the parent's alone: the workers ignore SIGINT (a worker killed while it held the result queue's
lock would leave the pool's shutdown waiting forever), and the parent, on an interrupt or an error, cancels
the chunks not started and terminates the workers instead of waiting for them.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any

from . import io as skio
from ._lib import signals_held

__all__ = ["ChunkResult", "accumulate_in_processes", "chunks"]

#: What one worker returns: the case names and voxel counts, in order, and its accumulator.
ChunkResult = tuple[list[str], list[int], Any]
_CHUNKS_PER_WORKER = 4  # several chunks per worker balance volumes of different sizes


def chunks(n_items: int, n_workers: int) -> list[range]:
    """Contiguous ranges that cover ``range(n_items)`` in order, about ``_CHUNKS_PER_WORKER`` per worker."""
    n_chunks = max(1, min(n_items, n_workers * _CHUNKS_PER_WORKER))
    bounds = [round(i * n_items / n_chunks) for i in range(n_chunks + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _accumulate_chunk(
    cases: Sequence[skio.Case], read_options: Mapping[str, Any], make_accumulator: Callable[[], Any]
) -> ChunkResult:
    """Read the cases of one chunk and fold them into a new accumulator (runs in a worker process)."""
    accumulator = make_accumulator()
    names, voxels = [], []
    for case in cases:
        arrays = skio.read_case(case, **read_options)
        try:
            accumulator.add_case(case.name, arrays)
        except (ValueError, TypeError) as exc:
            msg = f"case {case.name!r}: {exc}"
            raise (TypeError if isinstance(exc, TypeError) else ValueError)(msg) from None
        names.append(case.name)
        voxels.append(int(arrays.pred.size))
    return names, voxels, accumulator


def _ignore_interrupts() -> None:
    """Runs first in every worker: Ctrl-C (SIGINT, which a terminal sends to the whole process group) is the
    parent's to handle. A worker that died of it could hold the lock of the result queue, and the pool's
    shutdown would then wait for it forever. The workers start with SIGINT blocked (see
    ``_interrupts_held``), so none is hit before this runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """While the pool starts its processes (main thread only): SIGINT and SIGTERM are held and delivered
    when the block ends, so that the parent never stops between the start of a worker and its record in the
    pool (a worker it could not stop); and SIGINT is blocked in this thread (POSIX), so that the forkserver
    and the workers start with it blocked until ``_ignore_interrupts`` has run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with signals_held(*(number.name for number in _HELD)):
        blocks = hasattr(signal, "pthread_sigmask")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if blocks else None
        try:
            yield
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)


_HELD = (signal.SIGINT, signal.SIGTERM)


def _silence_cancelled_future_race() -> None:
    """The pool's manager thread, seeing workers we terminated, sets an error on every pending future; on
    a future we already cancelled CPython 3.11 raises ``InvalidStateError`` in that thread, which would
    print a traceback after the one-line message. Only that error is dropped; every other thread error is
    reported as before."""
    report = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not None and issubclass(args.exc_type, InvalidStateError):
            return
        report(args)

    threading.excepthook = hook


def _stop(pool: ProcessPoolExecutor, futures: Sequence[Future[ChunkResult]]) -> None:
    """End the pool now (on an error or an interrupt of the parent): cancel what has not started, terminate
    the workers instead of waiting for their chunks, and reap them. Further Ctrl-C presses (and SIGTERM)
    are ignored until this is done, so that no worker outlives the parent."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in _HELD} if main_thread else {}
    _silence_cancelled_future_race()
    try:
        for future in futures:
            future.cancel()
        # the executor has no public way to stop running workers; its ``_processes`` (pid -> Process) has
        # been there since Python 3.2
        workers = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        for process in workers:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        # The pool's manager thread closes its wake-up pipe when it has seen the workers end. At exit
        # CPython (3.11) writes to that pipe without a lock: if the thread were still closing it then, the
        # interpreter would print a "Bad file descriptor" traceback after our one line. With the workers
        # gone the thread ends at once; the timeout only bounds a case we have not seen.
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout=10)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def accumulate_in_processes(
    cases: Sequence[skio.Case],
    read_options: Mapping[str, Any],
    make_accumulator: Callable[[], Any],
    *,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> ChunkResult:
    """Read and accumulate ``cases`` in ``workers`` processes; merge the accumulators in case order.

    Parameters
    ----------
    cases : sequence of Case
        From [`selectivekit.io.pair_files`][selectivekit.io.pair_files], in the order the images are to be
        accumulated.
    read_options : mapping
        Keyword arguments of [`selectivekit.io.read_case`][selectivekit.io.read_case] (picklable).
    make_accumulator : callable
        Builds an empty accumulator (picklable: a class or a ``functools.partial`` of one); it must have
        ``add_case(name, arrays)`` (``arrays``: the [`CaseArrays`][selectivekit.io.CaseArrays] of one case)
        and ``merge(other)``.
    workers : int
        Number of processes (>= 1).
    progress : callable, optional
        Called in this process with the number of cases of each chunk when it is done (in the order they
        finish).

    Returns
    -------
    names, voxels, accumulator
        The case names and voxel counts in case order, and the merged accumulator.

    Raises
    ------
    ValueError, TypeError, OSError
        The first error in case order, as one process would have raised it (the other chunks are
        cancelled).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        msg = f"`workers` must be an integer >= 1, got {workers!r}."
        raise ValueError(msg)
    if not cases:
        msg = "`cases` must hold at least one case, got none."
        raise ValueError(msg)
    parts = chunks(len(cases), workers)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(parts)), mp_context=_context(), initializer=_ignore_interrupts
    )
    futures: list[Future[ChunkResult]] = []
    try:
        with _interrupts_held():
            futures = [
                pool.submit(_accumulate_chunk, [cases[i] for i in part], dict(read_options), make_accumulator)
                for part in parts
            ]
        sizes = {future: len(part) for part, future in zip(parts, futures, strict=True)}
        for future in as_completed(futures):
            if future.exception() is not None:
                break  # the error raised below is the first in case order, not the first to happen
            if progress is not None:
                progress(sizes[future])
        results = [future.result() for future in futures]
    except BaseException:
        _stop(pool, futures)
        raise
    pool.shutdown(wait=True)
    names, voxels, accumulator = results[0]
    for more_names, more_voxels, more in results[1:]:
        accumulator.merge(more)
        names += more_names
        voxels += more_voxels
    return names, voxels, accumulator
