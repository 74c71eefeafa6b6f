"""The threshold file that ``calibrate`` writes and ``evaluate --threshold`` reads: every field checked, each
error one line naming the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..report import read_json
from ._common import CommandError, shortened

__all__ = ["THRESHOLD_KIND", "read_threshold_file"]

THRESHOLD_KIND = "selectivekit-threshold"


def read_threshold_file(path: Path) -> dict[str, Any]:
    """The threshold file written by ``calibrate``, every field checked (one line naming the field)."""
    if not path.is_file():
        msg = (
            f"`--threshold` must be a file written by `selectivekit calibrate`, got {str(path)!r} "
            "(no such file)."
        )
        raise CommandError(msg)
    data = read_json(path, "--threshold")
    if not isinstance(data, dict) or data.get("kind") != THRESHOLD_KIND or "threshold" not in data:
        msg = f"`--threshold` file {str(path)!r} was not written by `selectivekit calibrate`."
        raise CommandError(msg)
    threshold = data["threshold"]
    if threshold is not None and not _real_in(threshold, -math.inf, math.inf, open_low=True, open_high=True):
        raise _field_error(path, "threshold", "a finite number or null (refer everything)", threshold)
    if data.get("refers_all") is not (threshold is None):
        expected = "true with a null threshold" if threshold is None else "false beside a finite threshold"
        raise _field_error(path, "refers_all", expected, data.get("refers_all"))
    method = data.get("method")
    if method not in ("crc", "ltt"):
        raise _field_error(path, "method", '"crc" or "ltt"', method)
    max_dice_loss = data.get("max_dice_loss")
    if not _real_in(max_dice_loss, 0.0, 1.0, open_low=True, open_high=True):
        raise _field_error(path, "max_dice_loss", "a number in (0, 1)", max_dice_loss)
    delta = data.get("delta")
    if method == "crc" and delta is not None:
        raise _field_error(path, "delta", 'null with method "crc"', delta)
    if method == "ltt" and not _real_in(delta, 0.0, 1.0, open_low=True, open_high=True):
        raise _field_error(path, "delta", 'a number in (0, 1) with method "ltt"', delta)
    _check_calibration(path, data, method, threshold is None, float(max_dice_loss))
    if method == "ltt" and data.get("bound", "hoeffding-bentkus") not in ("hoeffding-bentkus", "wsr"):
        raise _field_error(path, "bound", '"hoeffding-bentkus" or "wsr"', data.get("bound"))
    _check_risks(path, data)
    _check_settings(path, data)
    return data


def _check_risks(path: Path, data: dict[str, Any]) -> None:
    """``risks`` (written by ``--per-structure`` and ``--max-worst-dice-loss``): each risk's limit, loss and
    bound, the bound at most the limit."""
    if "risks" not in data:
        return
    risks = _object_field(path, data, "risks")
    if not risks:
        raise _field_error(path, "risks", "an object with one entry per risk", risks)
    for name, entry in risks.items():
        if not isinstance(entry, dict):
            raise _field_error(path, f"risks.{name}", "an object", entry)
        limit = entry.get("max_dice_loss")
        if not _real_in(limit, 0.0, 1.0, open_low=True, open_high=True):
            raise _field_error(path, f"risks.{name}.max_dice_loss", "a number in (0, 1)", limit)
        for key, high in (("loss", 1.0), ("bound", float(limit) + 1e-9)):
            if not _real_in(entry.get(key), 0.0, high):
                expected = "a number in [0, max_dice_loss]" if key == "bound" else "a number in [0, 1]"
                raise _field_error(path, f"risks.{name}.{key}", expected, entry.get(key))


def _check_calibration(
    path: Path, data: dict[str, Any], method: str, refers_all: bool, max_dice_loss: float
) -> None:
    calibration = _object_field(path, data, "calibration")
    n_images = calibration.get("n_images")
    if not _positive_integer(n_images):
        raise _field_error(path, "calibration.n_images", "an integer >= 1", n_images)
    # the bound is at most max_dice_loss (1e-9: the last bisection step of the Learn-then-Test bound)
    ranges = (("coverage", 0.0 if refers_all else 1.0), ("loss", 1.0), ("bound", max_dice_loss + 1e-9))
    for key, high in ranges:
        if not _real_in(calibration.get(key), 0.0, high):
            expected = "a number in [0, max_dice_loss]" if key == "bound" else f"a number in [0, {high:g}]"
            raise _field_error(path, f"calibration.{key}", expected, calibration.get(key))
    p_value = calibration.get("p_value")
    if (method == "crc" and p_value is not None) or (method == "ltt" and not _real_in(p_value, 0.0, 1.0)):
        expected = 'null with method "crc"' if method == "crc" else 'a number in [0, 1] with method "ltt"'
        raise _field_error(path, "calibration.p_value", expected, p_value)


def _check_settings(path: Path, data: dict[str, Any]) -> None:
    settings = _object_field(path, data, "settings")
    num_classes = settings.get("num_classes")
    if not _positive_integer(num_classes):
        raise _field_error(path, "settings.num_classes", "an integer >= 1", num_classes)
    if not isinstance(settings.get("include_background"), bool):
        raise _field_error(
            path, "settings.include_background", "true or false", settings.get("include_background")
        )
    if settings.get("source") not in ("uncertainty", "probs"):
        raise _field_error(path, "settings.source", '"uncertainty" or "probs"', settings.get("source"))
    for key in ("label_map", "label_map_labels", "label_map_pred"):
        mapping = settings.get(key)
        if mapping is not None and not (
            isinstance(mapping, dict)
            and all(isinstance(label, int) and not isinstance(label, bool) for label in mapping.values())
        ):
            raise _field_error(path, f"settings.{key}", "null or an object of integer labels", mapping)


def _object_field(path: Path, data: dict[str, Any], field: str) -> dict[str, Any]:
    value = data.get(field)
    if not isinstance(value, dict):
        raise _field_error(path, field, "an object", value)
    return value


def _field_error(path: Path, field: str, expected: str, value: Any) -> CommandError:
    """The one-line error for a field of a threshold file that is not what ``calibrate`` writes."""
    msg = f"`--threshold` file {str(path)!r}: `{field}` must be {expected}, got {shortened(value, 60)}."
    return CommandError(msg)


def _positive_integer(value: Any) -> bool:
    """``value`` is a JSON integer (not a boolean) >= 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _real_in(value: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> bool:
    """``value`` is a JSON number (not a boolean) within ``[low, high]`` (ends open as asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        return False
    return (low < number if open_low else low <= number) and (number < high if open_high else number <= high)
