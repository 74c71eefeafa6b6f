"""Signals held during a step that must not be cut in two (a report's swap, the start of worker processes)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["signals_held"]


@contextmanager
def signals_held(*names: str) -> Iterator[None]:
    """The signals ``names`` (e.g. ``"SIGINT"``) received inside the block are delivered when it ends.

    Each one received is delivered once, in the order first received, to the handler that was set before
    the block (a default action is taken again with ``signal.raise_signal``; an ignored signal stays
    ignored). Main thread only: elsewhere Python cannot install handlers, and the signals go to the main
    thread anyway. A name this platform lacks (``SIGHUP`` on Windows) is skipped.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}
    for name in names:
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            previous[number] = signal.signal(number, lambda signum, frame: pending.append(signum))
        except (OSError, ValueError):
            continue
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            handler = previous[number]
            if callable(handler):
                handler(number, None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(number)  # the default action (None: a handler not set from Python)
