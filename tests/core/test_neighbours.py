"""core.neighbours: the gap between real images, near-duplicates of what the generator
learned from, and the k-NN manifold (improved precision and recall)."""

import torch

from defectgen.core import neighbours


def test_near_duplicates_and_the_real_manifold():
    real = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert neighbours.nearest_gap(real) == 10.0
    synth = torch.tensor([[1.0, 0.0], [5.0, 5.0], [9.0, 10.5]])
    # near a learned image (any of them, not only a recorded parent) is a near-duplicate
    dup = neighbours.near_duplicates(synth, real, gap=10.0, ratio=0.25)
    assert dup.tolist() == [True, False, True]
    # k-NN manifold (k 1: each real point's ball reaches its nearest neighbour, 10 away)
    precision, recall, inside = neighbours.precision_recall(real, synth, k=1)
    assert inside.tolist() == [True, True, True] and precision == 1.0
    far = torch.tensor([[100.0, 100.0]])
    assert neighbours.precision_recall(real, far, k=1)[0] == 0.0
