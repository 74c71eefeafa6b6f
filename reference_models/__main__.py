"""``python -m reference_models``: the command line of the reference trainers."""

import os

# Before torch is imported: idle OpenMP threads sleep instead of spinning. On a small shared CPU machine
# a spinning thread that loses its core stalls every parallel region (measured here: 2 threads with one
# competing process ran 4x slower than with passive waiting); on an idle machine the cost is negligible.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from reference_models.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
