"""Reference trainers that reproduce Ding et al. (MIDL 2020) on MM-WHS and GlaS (not installed).

Run from the repository root: ``python -m reference_models reproduce --help``.
"""
