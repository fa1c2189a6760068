"""The equal step budget's batch order: plain permutations, or class-balanced draws."""

from __future__ import annotations

import torch

from defectgen.core.train_budget import batch_order


def shares(classes, balanced: bool) -> float:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        order = batch_order(len(classes), 16, 200, classes if balanced else None)
        drawn = torch.cat(list(order))
    assert len(drawn) == 16 * 200  # exactly the budget's steps, full batches
    return float((torch.tensor(classes)[drawn] == 1).float().mean())


def test_a_rare_class_fills_half_the_batches_when_drawn_class_balanced():
    classes = [0] * 91 + [1] * 9  # a line where one class is rare
    assert abs(shares(classes, balanced=False) - 0.09) < 0.01  # permutations: as it is
    assert abs(shares(classes, balanced=True) - 0.5) < 0.05
