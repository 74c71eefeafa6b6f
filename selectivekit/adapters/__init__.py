"""Framework adapters: :mod:`selectivekit.adapters.torch` (PyTorch), :mod:`selectivekit.adapters.keras` and
:mod:`selectivekit.adapters.nnunet` (nnU-Net v2 trainers).

Each imports its framework (``nnunet`` only when a trainer is first used); the core package imports none.
"""
