"""The gate's decisions, on features and distances (no paths, no models).

- Reference baselines make a distance readable: real-vs-real (train vs held-out
  images of the same class) is the baseline a perfect generator reaches; blurred and
  noised real images show what obvious damage scores.
- A class passes when its synthetic set is within `max_ratio` times its
  real-vs-real distance (and under an optional absolute ceiling).
- Near-duplicates and the real manifold (per image) are in core.neighbours.
- The fidelity floors (`floors`, the only things called floors) fail a class whose
  distance is beyond max_ratio x the real-vs-real baseline or worse than damaged real
  images.
- `decide` is the verdict's rule, from those numbers and the no-harm check on val
  (core.no_harm); the stage, the reports and the docs quote its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from defectgen.config import GateConfig
from defectgen.core import no_harm


def blurred(images: list[np.ndarray], radius: float) -> list[np.ndarray]:
    """Gaussian-blurred copies (the 'obviously too smooth' reference)."""
    return [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in images]


def noised(images: list[np.ndarray], sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Copies with additive Gaussian noise of `sigma` grey levels."""
    return [np.clip(x + rng.normal(0.0, sigma, x.shape), 0, 255).astype(np.uint8) for x in images]


@dataclass(frozen=True)
class Evidence:
    """What the gate measured for one class (None: not measurable, `missing` says why)."""

    n_compared: int  # synthetic images in the distance comparison
    n_reference: int  # reference (gate-half val) images
    distance: float | None = None  # synthetic vs reference
    baseline: float | None = None  # real train vs reference: the real-vs-real baseline
    blur: float | None = None  # blurred real train vs reference
    noise: float | None = None  # noised real train vs reference
    own: dict | None = None  # core.no_harm.check with this class's images added
    pooled: dict | None = None  # the same with every floor-passing class's images added
    missing: str | None = None  # why the no-harm check could not run


@dataclass(frozen=True)
class Decision:
    passed: bool
    verdict: str  # pass | fail | inconclusive (core.no_harm.VERDICTS)
    rule: str  # which check decided: floor | class | pooled | fidelity
    reason: str  # what was checked and what it found, once
    change: str  # what would change the verdict ("" when passed)
    superior: bool  # better than the classical copies on val (promotes the adapter)
    fidelity_passed: bool | None  # the distance floors' answer
    fidelity_reason: str | None


def floors(e: Evidence, cfg: GateConfig) -> tuple[bool | None, str | None]:
    """The per-class fidelity floors: (passed, what they found); (None, None) when fewer
    than 2 synthetic or reference images leave nothing to compare."""
    if e.distance is None or e.n_compared < 2 or e.n_reference < 2:
        return None, None
    ratio = e.distance / e.baseline if e.baseline else float("inf")
    words = f"distance {e.distance:.1f} is {ratio:.2f}x the real-vs-real {e.baseline:.1f}"
    if "ratio" in cfg.floors and ratio > cfg.max_ratio:
        return False, f"{words} (allowed {cfg.max_ratio:g}x)"
    if cfg.max_distance is not None and e.distance > cfg.max_distance:
        return False, f"distance {e.distance:.1f} is above the ceiling {cfg.max_distance:g}"
    for floor, name, damaged in (("blur", "blurred", e.blur), ("noise", "noised", e.noise)):
        if floor in cfg.floors and damaged is not None and e.distance > damaged:
            return (
                False,
                f"distance {e.distance:.1f} is worse than {name} real images' {damaged:.1f}",
            )
    return True, words


def decide(e: Evidence, cfg: GateConfig) -> Decision:
    """The gate's rule, the one place it is written.

    1. Fewer than 2 synthetic or reference images: fail (nothing to compare).
    2. The fidelity floors (`floors`, those in cfg.floors): a distance beyond
       cfg.max_ratio x real-vs-real (or the ceiling), or worse than blurred or noised
       real images, fails.
       cfg.decide_by "fidelity" stops here: passing the floors passes.
    3. cfg.decide_by "no_harm": the class's own no-harm check (core.no_harm.answer) where
       it resolves (pass or fail); else the pooled, dataset-level one where that
       resolves; else inconclusive, which cfg.inconclusive rejects or accepts. A check
       that could not run fails, saying why.
    """
    fidelity, f_reason = floors(e, cfg)
    if fidelity is None:
        reason = (
            f"{e.n_compared} synthetic (after dropping near-duplicates) and {e.n_reference} "
            "reference images: fewer than 2 to compare"
        )
        change = (
            "more val images would (the gate compares with its half of val)"
            if e.n_reference < 2
            else "more generated images would"
        )
        return Decision(False, "fail", "floor", reason, change, False, None, None)
    if not fidelity:
        change = "better images would: a longer finetune, another sweep cell or another method"
        return Decision(
            False, "fail", "floor", f"fidelity floor: {f_reason}", change, False, False, f_reason
        )
    if cfg.decide_by == "fidelity":
        return Decision(
            True,
            "pass",
            "fidelity",
            f"fidelity floors passed: {f_reason}",
            "",
            False,
            True,
            f_reason,
        )
    if e.own is None:
        reason = f"no-harm check not possible: {e.missing or 'no estimate'}"
        return Decision(False, "fail", "class", reason, "", False, True, f_reason)
    own = no_harm.answer(e.own, margin=cfg.margin, harm=cfg.harm)
    pooled = (
        None if e.pooled is None else no_harm.answer(e.pooled, margin=cfg.margin, harm=cfg.harm)
    )
    if own != "inconclusive" or pooled in (None, "inconclusive"):
        verdict, rule, evidence = own, "class", e.own
        where = "this class's images"
    else:
        verdict, rule, evidence = pooled, "pooled", e.pooled
        where = (
            "every class's images that passed the floors (this class's own check was inconclusive)"
        )
    reason = f"no harm? {where}: {no_harm.describe(evidence, margin=cfg.margin)}"
    change = no_harm.what_would_change(verdict, evidence, margin=cfg.margin)
    passed = verdict == "pass" or (verdict == "inconclusive" and cfg.inconclusive == "accept")
    if verdict == "inconclusive":
        reason += "; accepted by gate.inconclusive" if passed else "; kept out (gate.inconclusive)"
    superior = no_harm.superior(e.own)
    return Decision(passed, verdict, rule, reason, change, superior, True, f_reason)
