"""Ctrl-C (SIGINT) and SIGTERM: a SIGTERM raised like a Ctrl-C, and both held while ``main`` prints its one
line about an interruption."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Terminated", "interrupts_ignored", "terminate_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt: the same clean-up, another message."""


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def terminate_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise `Terminated` (main thread only); returns what restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (OSError, ValueError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
