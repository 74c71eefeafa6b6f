"""Framework adapters: `selectivekit.adapters.torch` (PyTorch), `selectivekit.adapters.keras` and
`selectivekit.adapters.nnunet` (nnU-Net v2 trainers).

Each imports its framework (``nnunet`` only when a trainer is first used; torchmetrics only when a metric of
``selectivekit.adapters.torch`` is first used); the core package imports none.
"""
