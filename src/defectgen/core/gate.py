"""The gate's decisions, on features and distances (no paths, no models).

- Reference baselines make a distance readable: real-vs-real (train vs held-out
  images of the same class) is the floor a perfect generator reaches; blurred and
  noised real images show what obvious damage scores.
- A class passes when its synthetic set is within `max_ratio` times its
  real-vs-real distance (and under an optional absolute ceiling).
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

import numpy as np
import torch
from PIL import Image, ImageFilter


def blurred(images: list[np.ndarray], radius: float) -> list[np.ndarray]:
    """Gaussian-blurred copies (the 'obviously too smooth' reference)."""
    return [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in images]


def noised(images: list[np.ndarray], sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Copies with additive Gaussian noise of `sigma` grey levels."""
    return [np.clip(x + rng.normal(0.0, sigma, x.shape), 0, 255).astype(np.uint8) for x in images]


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


def judge(
    distance: float, baseline: float, *, max_ratio: float, max_distance: float | None
) -> tuple[bool, str]:
    """Pass/fail and the reason, in words a reader of the report understands."""
    ratio = distance / baseline if baseline > 0 else float("inf")
    if ratio > max_ratio:
        return False, (
            f"distance {distance:.1f} is {ratio:.2f}x the real-vs-real {baseline:.1f} "
            f"(allowed {max_ratio:g}x)"
        )
    if max_distance is not None and distance > max_distance:
        return False, f"distance {distance:.1f} is above the ceiling {max_distance:g}"
    return True, f"distance {distance:.1f} is {ratio:.2f}x the real-vs-real {baseline:.1f}"


def utility_reason(u: dict, *, accepted: bool) -> str:
    """The utility verdict in words: what the proxy measured and what it decided."""
    ci = "" if u["ci"] is None else f" [{u['ci'][0]:+.3f}, {u['ci'][1]:+.3f}]"
    text = (
        f"utility {u['verdict']}: the synthetic images lower the proxy's val loss by "
        f"{u['delta']:+.3f}{ci} vs as many classical augmentations ({u['n_images']} val "
        f"images, {u['n_seeds']} draws)"
    )
    if u["verdict"] == "inconclusive":
        text += "; accepted by gate.inconclusive" if accepted else "; kept out (gate.inconclusive)"
    return text
