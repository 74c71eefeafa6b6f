"""Errors and warnings raised by the dataset readers; every message names the offending file."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent with its partner file."""


class UnknownLabelWarning(UserWarning):
    """A label file holds values outside the documented label map; they were mapped to background."""
