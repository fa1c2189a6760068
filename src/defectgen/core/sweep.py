"""Choosing strength s and guidance w per class (StableSDG III-C, Table IV; DefFiller
Table 2): score a grid of cells by the distance of a small probe batch to held-out real
images, pick the lowest. Decisions and the heatmap only (no models, no paths).

A cell whose probes mostly copy their parents (image-oriented generation at low
strength) is not eligible: it scores well by copying, and the gate would drop its
images as near-duplicates anyway.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from defectgen.core import metrics


@dataclass(frozen=True)
class Cell:
    strength: float | None  # None for txt2img, which has no strength
    guidance: float


def grid(strengths: list[float], guidances: list[float], mode: str) -> list[Cell]:
    """Every (strength, guidance) pair; guidance only for txt2img."""
    if mode == "txt2img":
        return [Cell(None, g) for g in guidances]
    return [Cell(s, g) for s in strengths for g in guidances]


def score(
    synthetic: torch.Tensor,
    reference: torch.Tensor,
    duplicates: torch.Tensor,
    *,
    subsets: int,
    seed: int,
) -> dict[str, float]:
    """One cell's numbers from its probes' features.

    Args:
        synthetic: (N, D) features of the probe images.
        reference: (M, D) features of the held-out real images.
        duplicates: (N,) bool, probe i is a near-copy of its parent.

    Returns:
        fd (Frechet), kd and kd_std (kernel distance), duplicate_fraction.
    """
    kd, kd_std = metrics.kernel(synthetic, reference, subsets=subsets, seed=seed)
    return {
        "fd": metrics.frechet(synthetic, reference),
        "kd": kd,
        "kd_std": kd_std,
        "duplicate_fraction": float(duplicates.float().mean()) if len(duplicates) else 0.0,
    }


def choose(scored: list[dict], *, metric: str, max_duplicate_fraction: float) -> tuple[dict, str]:
    """The best cell of `scored` (dicts with strength, guidance, `metric`,
    duplicate_fraction) and why, in words for the report.

    Lowest `metric` among cells whose duplicate fraction is within the limit; when no
    cell is, the lowest overall, said so. Ties go to the first cell in grid order.
    """
    eligible = [c for c in scored if c["duplicate_fraction"] <= max_duplicate_fraction]
    if eligible:
        best = min(eligible, key=lambda c: c[metric])
        excluded = len(scored) - len(eligible)
        reason = f"lowest {metric} {best[metric]:.4g} of {len(eligible)} eligible cells"
        if excluded:
            reason += (
                f"; {excluded} excluded for copying their parents "
                f"(duplicate fraction > {max_duplicate_fraction:g})"
            )
        return best, reason
    best = min(scored, key=lambda c: c[metric])
    return best, (
        f"every cell copies its parents beyond {max_duplicate_fraction:g}; lowest {metric} "
        f"{best[metric]:.4g} taken anyway (the gate drops the copies)"
    )


def heatmap(
    scored: list[dict], *, metric: str, metric_name: str, title: str, chosen: dict
) -> bytes:
    """A PNG heatmap: strength down, guidance across, `metric` per cell (lower is
    better), the chosen cell outlined, ineligible cells marked 'dup'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strengths = sorted({c["strength"] for c in scored}, key=lambda s: -1 if s is None else s)
    guidances = sorted({c["guidance"] for c in scored})
    values = np.full((len(strengths), len(guidances)), np.nan)
    for c in scored:
        values[strengths.index(c["strength"]), guidances.index(c["guidance"])] = c[metric]
    fig, ax = plt.subplots(figsize=(1.1 * len(guidances) + 2.2, 0.8 * len(strengths) + 1.6))
    im = ax.imshow(values, cmap="viridis_r", aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{metric_name} (lower is better)")
    ax.set_xticks(range(len(guidances)), [f"{g:g}" for g in guidances])
    ax.set_yticks(range(len(strengths)), ["-" if s is None else f"{s:g}" for s in strengths])
    ax.set_xlabel("guidance w")
    ax.set_ylabel("strength s")
    ax.set_title(title, fontsize=9)
    span = np.nanmax(values) - np.nanmin(values) or 1.0
    for c in scored:
        i, j = strengths.index(c["strength"]), guidances.index(c["guidance"])
        text = f"{c[metric]:.4g}" + ("\ndup" if c.get("eligible") is False else "")
        dark = (c[metric] - np.nanmin(values)) / span > 0.5
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if dark else "k")
    i, j = strengths.index(chosen["strength"]), guidances.index(chosen["guidance"])
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
