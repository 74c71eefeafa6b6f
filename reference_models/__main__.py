"""``python -m reference_models``: the command line of the reference trainers."""

from reference_models.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
