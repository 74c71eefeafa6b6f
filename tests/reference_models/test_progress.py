"""``python -m reference_models``: progress bars on a terminal only (never ``\\r`` updates into a log file),
``--no-progress`` off everywhere."""

from __future__ import annotations

import io

import pytest

from reference_models.cli import build_parser, config_from_args


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(
    ("tty", "extra", "progress"),
    [
        (True, [], True),
        (False, [], False),
        (True, ["--no-progress"], False),
        (False, ["--no-progress"], False),
    ],
)
def test_progress_only_on_a_terminal(monkeypatch, tty, extra, progress):
    monkeypatch.setattr("sys.stderr", _Stream(tty))
    args = build_parser().parse_args(["reproduce", *extra])
    assert config_from_args(args).progress is progress
