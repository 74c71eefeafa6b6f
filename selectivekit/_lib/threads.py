"""How many threads a step may use for work that NumPy does without the GIL (the merge of sorted runs):
one unless a caller says otherwise (``evaluate --workers N`` says N, once its workers have ended)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["thread_budget", "thread_count"]

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
