"""Framework adapters: `selectivekit.adapters.torch` (PyTorch) and `selectivekit.adapters.keras`.

Each imports its framework; the core package imports neither.
"""
