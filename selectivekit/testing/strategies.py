"""Hypothesis strategies for selective-prediction data, with the heavy ties real models produce.

Used by selectivekit's own tests and available to users who test code built on it::

    from hypothesis import given
    from selectivekit.testing.strategies import scored_instances

    @given(scored_instances())
    def test_my_metric(data):
        u, correct = data
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["scored_instances", "uncertainties"]


def uncertainties(n: int, *, ties: bool = True, dtype: type = np.float64) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``n`` finite uncertainties.

    With ``ties=True`` values are drawn from a handful of levels (as with saturated softmax, where many
    voxels share ``u == 0`` exactly), otherwise from a continuous range (ties remain possible but rare).
    """
    if ties:
        levels = st.sampled_from([0.0, 0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 3.0, -1.0])
        return hnp.arrays(dtype, n, elements=levels)
    return hnp.arrays(dtype, n, elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32))


@st.composite
def scored_instances(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 60, ties: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(uncertainty, correct)``: float64 uncertainties and boolean correctness of equal length.

    ``ties=None`` lets hypothesis choose between tie-heavy and continuous values.
    """
    n = draw(st.integers(min_size, max_size))
    use_ties = draw(st.booleans()) if ties is None else ties
    u = draw(uncertainties(n, ties=use_ties))
    correct = draw(hnp.arrays(np.bool_, n))
    return u, correct
