"""defectgen.seeds: seeds derived from the run seed are stable, and independent per name."""

from __future__ import annotations

import numpy as np

from defectgen.seeds import derive_seed, parent_order


def test_a_derived_seed_is_stable_and_differs_by_every_part():
    seed = derive_seed(7, "crack", 3)
    assert seed == derive_seed(7, "crack", 3)
    others = {derive_seed(8, "crack", 3), derive_seed(7, "scratch", 3), derive_seed(7, "crack", 4)}
    assert seed not in others and len(others) == 3
    assert 0 <= seed < 2**63  # a numpy and torch seed


def test_parent_order_is_a_permutation_fixed_by_seed_and_class():
    order = parent_order(7, "crack", 10)
    assert sorted(order) == list(range(10))
    assert np.array_equal(order, parent_order(7, "crack", 10))
    assert not np.array_equal(order, parent_order(7, "scratch", 10))
