"""Nearest neighbours in feature space (no paths, no models, no params): the per-image
checks the sweep and the gate share. Kept apart from core.gate so the stages that only
measure (masks, sweep) do not depend on the gate's rule or read its keys.

- A generator can copy what it learned from (img2img at low strength copies its
  parent; any mode can memorise): a synthetic image whose feature distance to the
  nearest image the generator learned from is below `ratio` times the typical gap
  between distinct real images (median nearest-neighbour distance) is a near-duplicate.
- Realism per image and coverage per class (Kynkaanniemi et al., 2019, improved
  precision and recall): the real manifold is the union of balls around each real
  feature reaching its k-th nearest real neighbour; a synthetic image inside it is
  realistic (precision: the fraction inside), and real images inside the synthetic
  manifold are covered (recall).
"""

from __future__ import annotations

import torch


def nearest_gap(features: torch.Tensor) -> float:
    """Median distance from each row of (N, D) features to its nearest other row."""
    d = torch.cdist(features, features)
    d.fill_diagonal_(float("inf"))
    return float(d.min(dim=1).values.median())


def near_duplicates(
    synthetic: torch.Tensor, learned: torch.Tensor, *, gap: float, ratio: float
) -> torch.Tensor:
    """(N,) bool: synthetic row i is closer to its nearest row of `learned` (the images
    the generator learned from) than ratio x gap."""
    if len(synthetic) == 0 or len(learned) == 0:
        return torch.zeros(len(synthetic), dtype=torch.bool)
    return torch.cdist(synthetic, learned).min(dim=1).values < ratio * gap


def _knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (k capped at N - 1)."""
    d = torch.cdist(features, features)
    d.fill_diagonal_(float("inf"))
    k = min(k, len(features) - 1)
    return d.kthvalue(k, dim=1).values


def inside_manifold(points: torch.Tensor, support: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: each row of `points` lies within the k-NN ball of some `support` row."""
    if len(support) < 2 or len(points) == 0:
        return torch.zeros(len(points), dtype=torch.bool)
    radii = _knn_radii(support, k)
    return (torch.cdist(points, support) <= radii[None, :]).any(dim=1)


def precision_recall(
    real: torch.Tensor, synthetic: torch.Tensor, k: int
) -> tuple[float, float, torch.Tensor]:
    """k-NN precision (synthetic inside the real manifold), recall (real inside the
    synthetic manifold) and the per-image `inside` mask of the synthetic rows."""
    inside = inside_manifold(synthetic, real, k)
    covered = inside_manifold(real, synthetic, k)
    precision = float(inside.float().mean()) if len(synthetic) else 0.0
    recall = float(covered.float().mean()) if len(real) else 0.0
    return precision, recall, inside
