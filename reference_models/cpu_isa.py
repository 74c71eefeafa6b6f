"""One CPU instruction set for the training kernels, so that a run gives the same bits on every x86-64 CPU.

PyTorch picks its CPU kernels by the instruction set of the machine: oneDNN (the convolutions), ATen's
vectorized kernels and MKL each take their widest path. AVX-512 and AVX2 kernels add in another order, so
the same command gives other last bits on a CPU with AVX-512 than on one without, and training amplifies
them: the main job's baseline AURC moved from 1.727 to 1.818 between two "AMD EPYC" machines
(docs/reproduction.md, "Determinism across machines"). Capping all three at AVX2, which every x86-64 server
CPU of the last decade has, makes the machine's widest path irrelevant. This module imports nothing heavy:
it must run before the first ``import torch`` (``python -m reference_models`` calls it first).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["CHOICE_VARIABLE", "PINNED", "pin_cpu_isa"]

CHOICE_VARIABLE = "REFERENCE_MODELS_CPU_ISA"
"""Environment variable that chooses the pin: ``avx2`` (the default) or ``native`` (no pin, each library's
widest path: faster on some CPUs, but the bits then depend on the CPU)."""

PINNED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
"""The variables set for ``avx2``: oneDNN's highest instruction set, ATen's kernel choice, MKL's code path."""


def pin_cpu_isa(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Cap the CPU kernels of PyTorch at AVX2 unless the user chose otherwise; call before importing torch.

    Each variable of `PINNED` is set unless it is set already (a value the user set wins). With
    ``REFERENCE_MODELS_CPU_ISA=native`` nothing is set.

    Parameters
    ----------
    environ : mutable mapping of str to str, optional
        The environment to change; ``os.environ`` when omitted.

    Returns
    -------
    dict of str to str
        The variables of `PINNED` that the environment holds afterwards, with their values.

    Raises
    ------
    ValueError
        If ``REFERENCE_MODELS_CPU_ISA`` is set to something other than ``avx2`` or ``native``.

    Examples
    --------
    >>> env = {"MKL_CBWR": "COMPATIBLE"}
    >>> pin_cpu_isa(env)
    {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_CBWR': 'COMPATIBLE'}
    >>> pin_cpu_isa({"REFERENCE_MODELS_CPU_ISA": "native"})
    {}
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(CHOICE_VARIABLE, "avx2").strip().lower()
    if choice not in ("avx2", "native"):
        msg = f"`{CHOICE_VARIABLE}` must be avx2 or native, got {environ[CHOICE_VARIABLE]!r}."
        raise ValueError(msg)
    if choice == "avx2":
        for name, value in PINNED.items():
            environ.setdefault(name, value)
    return {name: environ[name] for name in PINNED if name in environ}
