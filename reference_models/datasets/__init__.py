"""The dataset registry: one file per dataset family, one entry in ``_FAMILIES`` below.

A :class:`DatasetSpec` names a dataset as ``--dataset`` takes it and holds everything the rest of the code
asks of it: its default run settings, the function that turns its folder into a :class:`Task`, the writer of
its synthetic version (``None`` for a real dataset, which then needs ``--data-dir``), its dimensionality and
the study options it supports. To add a dataset, write ``reference_models/datasets/NAME.py`` with a
``SPECS`` tuple and add ``"NAME"`` to ``_FAMILIES`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DatasetSpec", "dataset_names", "get_dataset"]

_FAMILIES = ("glas", "mmwhs")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as ``--dataset`` names it.

    Attributes
    ----------
    name : str
    dims : int
        2 or 3 (spatial dimensions of the network).
    build_task : callable ``(cfg, directory) -> Task``
    defaults : dict
        ``lr``, ``epochs``, ``width``, ``patch``, ``samples_per_epoch``, ``spacing``, ``seg_loss``.
    write_synthetic : callable ``(directory, **options) -> Path`` or None
        Writer of the built-in synthetic version; ``None`` for a real dataset (needs ``--data-dir``).
    options : frozenset of str
        Study options the dataset supports: ``"protocol-authors"``, ``"slices"``.
    """

    name: str
    dims: int
    build_task: Callable
    defaults: dict
    write_synthetic: Callable | None = None
    options: frozenset = field(default_factory=frozenset)

    @property
    def synthetic(self) -> bool:
        return self.write_synthetic is not None


_REGISTRY: dict[str, DatasetSpec] = {}


def _load() -> dict[str, DatasetSpec]:
    if not _REGISTRY:
        for family in _FAMILIES:
            for spec in importlib.import_module(f"reference_models.datasets.{family}").SPECS:
                _REGISTRY[spec.name] = spec
    return _REGISTRY


def dataset_names() -> tuple[str, ...]:
    """Every registered dataset name, synthetic ones first (the order ``--dataset`` lists them)."""
    specs = _load().values()
    return tuple(s.name for s in specs if s.synthetic) + tuple(s.name for s in specs if not s.synthetic)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``; a ``ValueError`` naming the known datasets otherwise."""
    registry = _load()
    if name not in registry:
        msg = f"`dataset` must be one of {dataset_names()}, got {name!r}."
        raise ValueError(msg)
    return registry[name]
