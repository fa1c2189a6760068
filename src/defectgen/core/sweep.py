"""Choosing strength s and guidance w per class (StableSDG III-C, Table IV; DefFiller
Table 2): score a grid of cells by the distance of a small probe batch to held-out real
images, with the distance's bootstrap spread over probes; among cells within noise of
the lowest, pick the lowest strength. Decisions and the heatmap only (no models, no
paths).

A cell whose probes mostly copy their parents (image-oriented generation at low
strength) is not eligible: it scores well by copying, and the gate would drop its
images as near-duplicates anyway.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from defectgen.core import distances


@dataclass(frozen=True)
class Cell:
    strength: float | None  # None for txt2img, which has no strength
    guidance: float


def grid(strengths: list[float], guidances: list[float], mode: str) -> list[Cell]:
    """Every (strength, guidance) pair; guidance only for txt2img."""
    if mode == "txt2img":
        return [Cell(None, g) for g in guidances]
    return [Cell(s, g) for s in strengths for g in guidances]


def frechet_fast(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance of two small feature sets (N, M << D) in closed form.

    With A, B the centred sets scaled by 1/sqrt(n-1) (covariances A'A, B'B), the nonzero
    eigenvalues of A'A B'B are the squared singular values of A B', so
    tr sqrt(S1 S2) is the nuclear norm of A B' (an N x M matrix): no D x D square root.
    Equal to distances.frechet (torch-fidelity's formula) up to float error; cheap enough
    to bootstrap.
    """
    a, b = a.double(), b.double()
    ca = (a - a.mean(0)) / max(len(a) - 1, 1) ** 0.5
    cb = (b - b.mean(0)) / max(len(b) - 1, 1) ** 0.5
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    cross = torch.linalg.svdvals(ca @ cb.T).sum()
    return mean_term + float((ca**2).sum() + (cb**2).sum() - 2 * cross)


N_BOOT = 200


def frechet_spread(
    synthetic: torch.Tensor, reference: torch.Tensor, *, n_boot: int = N_BOOT, seed: int = 0
) -> float:
    """Standard deviation of the probes' Frechet distance over bootstrap resamples of
    the probes (the reference fixed): how much of a cell's number is its draw."""
    rng = np.random.default_rng(seed)
    n = len(synthetic)
    values = [frechet_fast(synthetic[rng.integers(0, n, n)], reference) for _ in range(n_boot)]
    return float(np.std(values, ddof=1))


def kernel_spread(
    synthetic: torch.Tensor, reference: torch.Tensor, *, n_boot: int = N_BOOT, seed: int = 0
) -> float:
    """The same for the kernel distance (KID's cubic polynomial kernel, unbiased MMD^2),
    from kernel matrices computed once. kd_std, KID's spread over random subsets, says
    how subsets of the probes disagree, not how far the estimate is from its mean."""
    x, y = synthetic.double(), reference.double()
    d = x.shape[1]
    kxx, kxy = (x @ x.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    m = len(y)
    yy = float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))
    rng = np.random.default_rng(seed)
    n = len(x)
    values = []
    for _ in range(n_boot):
        idx = torch.from_numpy(rng.integers(0, n, n))
        sub = kxx[idx][:, idx]
        xx = float((sub.sum() - sub.diagonal().sum()) / (n * (n - 1)))
        values.append(xx + yy - 2 * float(kxy[idx].mean()))
    return float(np.std(values, ddof=1))


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
        fd (Frechet), kd and kd_std (kernel distance, std over KID's subsets), each
        distance's bootstrap spread over probes (fd_spread, kd_spread), and
        duplicate_fraction.
    """
    kd, kd_std = distances.kernel(synthetic, reference, subsets=subsets, seed=seed)
    return {
        "fd": distances.frechet(synthetic, reference),
        "fd_spread": frechet_spread(synthetic, reference, seed=seed),
        "kd": kd,
        "kd_std": kd_std,
        "kd_spread": kernel_spread(synthetic, reference, seed=seed),
        "duplicate_fraction": float(duplicates.float().mean()) if len(duplicates) else 0.0,
    }


NOISE_Z = 1.96  # a cell within this many of the lowest cell's spreads is as good


def _within_noise(cells: list[dict], metric: str) -> tuple[dict, list[dict], float]:
    """The lowest cell, the cells within its noise band, and the band's width."""
    lowest = min(cells, key=lambda c: c[metric])
    band = NOISE_Z * lowest.get(f"{metric}_spread", 0.0)
    return lowest, [c for c in cells if c[metric] <= lowest[metric] + band], band


def _gentlest(cells: list[dict]) -> dict:
    """The lowest strength (txt2img: none), then the lowest guidance, of `cells`."""
    return min(cells, key=lambda c: (c["strength"] or 0.0, c["guidance"]))


def choose(scored: list[dict], *, metric: str, max_duplicate_fraction: float) -> tuple[dict, str]:
    """The chosen cell of `scored` (dicts with strength, guidance, `metric`, its
    `<metric>_spread`, duplicate_fraction) and why, in words for the report.

    Among cells whose duplicate fraction is within the limit (when none is, all, said
    so), the ones within noise of the lowest (`metric` <= lowest + NOISE_Z x the lowest
    cell's bootstrap spread) are equally good by this measure; of those the lowest strength,
    then the lowest guidance, is taken. So a reseed that reorders cells within their
    noise does not move the choice.
    """
    eligible = [c for c in scored if c["duplicate_fraction"] <= max_duplicate_fraction]
    if eligible:
        lowest, tied, band = _within_noise(eligible, metric)
        best = _gentlest(tied)
        excluded = len(scored) - len(eligible)
        reason = (
            f"lowest strength of {len(tied)} cells within noise (+{band:.3g}) of the "
            f"lowest {metric} {lowest[metric]:.4g} among {len(eligible)} eligible cells"
        )
        if excluded:
            reason += (
                f"; {excluded} excluded for copying their parents "
                f"(duplicate fraction > {max_duplicate_fraction:g})"
            )
        return best, reason
    lowest, tied, band = _within_noise(scored, metric)
    best = _gentlest(tied)
    return best, (
        f"every cell copies its parents beyond {max_duplicate_fraction:g}; lowest strength "
        f"within noise of the lowest {metric} {lowest[metric]:.4g} taken anyway (the gate "
        "drops the copies)"
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


def probe_grid(tiles: np.ndarray, cells: list[dict], chosen: dict) -> bytes:
    """The probe images laid out like the heatmap (strength down, guidance across),
    each row and column labelled with its value and the chosen cell outlined, as PNG.

    `tiles` is the unlabelled grid the sweep saved (one probe per cell, in `cells`'
    order, rows of one strength)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = list(dict.fromkeys(c["strength"] for c in cells))  # the saved order
    guidances = list(dict.fromkeys(c["guidance"] for c in cells))
    rows, cols = len(strengths), len(guidances)
    tiles = tiles[..., 0] if tiles.ndim == 3 and tiles.shape[2] == 1 else tiles
    h, w = tiles.shape[0] // rows, tiles.shape[1] // cols
    # labels in words at 11 pt (15 px at the page's 100 dpi): readable at 100 % zoom
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.7 * cols + 0.9, 1.7 * rows + 0.7), squeeze=False
    )
    for i, strength in enumerate(strengths):
        for j, guidance in enumerate(guidances):
            ax = axes[i][j]
            tile = tiles[i * h : (i + 1) * h, j * w : (j + 1) * w]
            ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"guidance {guidance:g}", fontsize=11)
            if j == 0:
                label = "txt2img" if strength is None else f"strength {strength:g}"
                ax.set_ylabel(label, fontsize=11)
            if (strength, guidance) == (chosen["strength"], chosen["guidance"]):
                for spine in ax.spines.values():
                    spine.set(color="red", linewidth=2.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
