"""How many threads a step may use for work that NumPy does without the GIL (the merge of sorted runs, two
independent results computed side by side): one unless a caller says otherwise (``evaluate --workers N``
says N, once its workers have ended)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

__all__ = ["beside", "thread_budget", "thread_count"]

_THREADS: contextvars.ContextVar[int] = contextvars.ContextVar("selectivekit_threads", default=1)


@contextmanager
def thread_budget(n: int) -> Iterator[None]:
    """Up to ``n`` threads inside the block (in this thread and the context it runs in)."""
    token = _THREADS.set(max(1, int(n)))
    try:
        yield
    finally:
        _THREADS.reset(token)


def thread_count() -> int:
    """The number of threads the current step may use (at least 1)."""
    return _THREADS.get()


@contextmanager
def beside(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Iterator[Future[Any]]:
    """``function(*args, **kwargs)`` in a second thread while the block runs, when the budget has two
    threads; before the block otherwise. The future holds its result once the block has ended; leaving
    the block waits for the thread (an error of the block wins over one of the function).

    The function must share no mutable state with the block: it runs at the same time."""
    if thread_count() < 2:
        done: Future[Any] = Future()
        done.set_result(function(*args, **kwargs))
        yield done
        return
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(context.run, function, *args, **kwargs)
        yield future
        future.result()  # waits, and raises the function's error after a block that ended well
