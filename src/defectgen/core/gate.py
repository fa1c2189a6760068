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
- `decide` is the verdict's rule, from those numbers and the utility estimate
  (core.value_proxy); the stage, the reports and the docs quote its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from defectgen.config import GateConfig


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


@dataclass(frozen=True)
class Evidence:
    """What the gate measured for one class (None: not measurable, `missing` says why)."""

    n_compared: int  # synthetic images in the distance comparison
    n_reference: int  # reference (gate-half val) images
    distance: float | None = None  # synthetic vs reference
    baseline: float | None = None  # real train vs reference: the real-vs-real floor
    blur: float | None = None  # blurred real train vs reference
    utility: dict | None = None  # core.value_proxy.crossfit's estimate
    missing: str | None = None  # why the utility could not be estimated


@dataclass(frozen=True)
class Decision:
    passed: bool
    verdict: str  # pass | fail | inconclusive
    reason: str
    fidelity_passed: bool | None  # the FD ratio rule's answer, under either rule
    fidelity_reason: str | None
    utility_verdict: str | None  # pass | fail | inconclusive from the interval alone


def _utility_verdict(u: dict | None) -> str | None:
    if u is None or u.get("delta") is None:
        return None
    if u["ci"] is None:
        return "inconclusive"
    lo, hi = u["ci"]
    return "pass" if lo > 0 else "fail" if hi < 0 else "inconclusive"


def utility_text(u: dict) -> str:
    """The utility estimate in words, with what its evidence can resolve.

    u["delta"] is classical minus synthetic held-out loss (positive: the synthetic
    images help); the words give the synthetic arm's loss relative to the classical one,
    so the sign is said once, in words, and the interval follows in the same sense."""
    diff = -u["delta"]  # synthetic minus classical: negative helps
    side = "lower" if diff < 0 else "higher"
    ci = "" if u["ci"] is None else f" [{-u['ci'][1]:+.3f}, {-u['ci'][0]:+.3f}]"
    mde = "" if u.get("mde") is None else f"; it resolves effects from {u['mde']:.3f}"
    if u.get("n_needed") is not None and u["n_needed"] > u["n_images"]:
        mde += f", one of {abs(diff):.3f} at about {u['n_needed']:,} train images"
    return (
        f"held-out loss {abs(diff):.3f} {side} with the synthetic images than with as many "
        f"classical augmentations (synthetic - classical {diff:+.3f}{ci}; {u['n_images']} "
        f"train images cross-fitted, {u['n_folds']} folds x {u['n_repeats']}{mde})"
    )


def decide(e: Evidence, cfg: GateConfig) -> Decision:
    """The gate's rule, the one place it is written.

    1. Fewer than 2 synthetic or reference images: fail (nothing to compare).
    2. The FD ratio rule: pass when distance <= cfg.max_ratio x real-vs-real (and under
       cfg.max_distance); it decides with cfg.decide_by "fidelity" and is reported
       under either rule.
    3. cfg.decide_by "utility": worse than blurred real images fails (the fidelity floor;
       the utility estimate is still reported); an unmeasurable utility fails; else the
       utility's 95 % interval above 0 passes, below 0 fails, and one spanning 0 is
       inconclusive, which cfg.inconclusive rejects or accepts.
    """
    u_verdict = _utility_verdict(e.utility)
    u_words = "" if u_verdict is None else f"; utility {u_verdict}: {utility_text(e.utility)}"
    if e.distance is None or e.n_compared < 2 or e.n_reference < 2:
        reason = (
            f"{e.n_compared} synthetic (after dropping near-duplicates) and {e.n_reference} "
            "reference images: fewer than 2 to compare"
        )
        return Decision(False, "fail", reason + u_words, None, None, u_verdict)
    ratio = e.distance / e.baseline if e.baseline else float("inf")
    words = f"distance {e.distance:.1f} is {ratio:.2f}x the real-vs-real {e.baseline:.1f}"
    if ratio > cfg.max_ratio:
        fidelity, f_reason = False, f"{words} (allowed {cfg.max_ratio:g}x)"
    elif cfg.max_distance is not None and e.distance > cfg.max_distance:
        fidelity = False
        f_reason = f"distance {e.distance:.1f} is above the ceiling {cfg.max_distance:g}"
    else:
        fidelity, f_reason = True, words
    if cfg.decide_by == "fidelity":
        verdict = "pass" if fidelity else "fail"
        return Decision(fidelity, verdict, f_reason, fidelity, f_reason, u_verdict)
    if e.blur is not None and e.distance > e.blur:
        reason = (
            f"distance {e.distance:.1f} is worse than blurred real images' {e.blur:.1f} "
            "(the fidelity floor)" + u_words
        )
        return Decision(False, "fail", reason, fidelity, f_reason, u_verdict)
    if u_verdict is None:
        reason = f"utility not measurable: {e.missing or 'no estimate'}; kept out"
        return Decision(False, "fail", reason, fidelity, f_reason, u_verdict)
    passed = u_verdict == "pass" or (u_verdict == "inconclusive" and cfg.inconclusive == "accept")
    reason = f"by the utility, {utility_text(e.utility)}"  # the verdict is said beside it
    if u_verdict == "inconclusive":
        reason += "; accepted by gate.inconclusive" if passed else "; kept out (gate.inconclusive)"
    return Decision(passed, u_verdict, reason, fidelity, f_reason, u_verdict)
