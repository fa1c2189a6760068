"""The gate's decisions, on features and distances (no paths, no models).

- Reference baselines make a distance readable: real-vs-real (train vs held-out
  images of the same class) is the floor a perfect generator reaches; blurred and
  noised real images show what obvious damage scores.
- A class passes when its synthetic set is within `max_ratio` times its
  real-vs-real distance (and under an optional absolute ceiling).
- Image-oriented generation at low strength can copy its parent: a synthetic image
  whose feature distance to its parent is below `ratio` times the typical gap
  between distinct real images (median nearest-neighbour distance) is a near-duplicate.
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
    synthetic: torch.Tensor, parents: torch.Tensor, *, gap: float, ratio: float
) -> torch.Tensor:
    """(N,) bool: synthetic row i is closer to its parent row i than ratio x gap."""
    return (synthetic - parents).norm(dim=1) < ratio * gap


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
