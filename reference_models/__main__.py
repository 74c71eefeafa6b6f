"""``python -m reference_models``: the command line of the reference trainers."""

import os
import sys

# Before torch is imported: idle OpenMP threads sleep instead of spinning. On a small shared CPU machine
# a spinning thread that loses its core stalls every parallel region (measured here: 2 threads with one
# competing process ran 4x slower than with passive waiting); on an idle machine the cost is negligible.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from reference_models.cpu_isa import pin_cpu_isa

# Also before torch is imported (oneDNN, ATen and MKL read their variables once): the CPU kernels run the
# AVX2 path on every CPU, so the bits of a run do not depend on whether the machine has AVX-512.
try:
    pin_cpu_isa()
except ValueError as exc:
    print(f"python -m reference_models: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

from reference_models.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
