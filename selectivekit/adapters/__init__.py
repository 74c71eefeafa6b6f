"""Framework adapters: :mod:`selectivekit.adapters.torch` (PyTorch) and :mod:`selectivekit.adapters.keras`.

Each imports its framework; the core package imports neither.
"""
