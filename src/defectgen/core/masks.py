"""Defect masks: new masks from real ones, their statistics, and the conditioning images
a mask-conditioned generator reads. Pure numpy/scipy on uint8 masks {0, 255}; no paths.

- `interpolate`: DefectSynth's image-space mask interpolation (III-C): the
  white-pixel coordinates of two masks, resampled to equal length, averaged with weight
  alpha, with continuity filling so chains stay connected, rasterised.
- `hmi_space`: which space HMI interpolates a class in: "latent" when the class's mean
  mask area ratio is at least tau (0.053 in the paper: large defects), else "image".
- `perturb`: Valvano et al.'s real masks with small random shape perturbations (seed
  003, 4.3): a random affine and an elastic deformation, kept only within sanity limits
  (area ratio to the source, nothing pushed off the image).
- `stats`: area ratio and 8-connected component counts, to compare generated masks
  with real ones.
- `MaskRange` and `drop_reasons`: which synthetic masks are fit for pairs (within the
  real masks' area and component range, widened by a factor) and which methods a class
  drops (too few masks in range, or far further from the val masks than the best).
- `coloured` and `topological_driver`: the plain class-coloured mask, and Valvano's
  topological driver (4.2): downscale, grayscale, adaptive threshold, scale to
  0..50, paint the class-coloured mask, rescale to 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TAU = 0.053  # DefectSynth's area-ratio threshold between image and latent interpolation
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def binary(mask: np.ndarray) -> np.ndarray:
    """bool (H, W) of a uint8 mask (anything > 127 is defect)."""
    return np.asarray(mask) > 127


def to_uint8(on: np.ndarray) -> np.ndarray:
    return np.where(on, 255, 0).astype(np.uint8)


def area_ratio(mask: np.ndarray) -> float:
    return float(binary(mask).mean())


def components(mask: np.ndarray) -> int:
    """8-connected defect regions."""
    return int(ndimage.label(binary(mask), structure=_EIGHT)[1])


@dataclass(frozen=True)
class MaskStats:
    n: int
    area_ratio_mean: float
    area_ratio_std: float
    components_mean: float
    empty_fraction: float
    area_ratio_min: float
    area_ratio_max: float
    components_max: int


def stats(masks: list[np.ndarray]) -> MaskStats:
    """Area and connectivity statistics of a set of masks (real or generated)."""
    if not masks:
        raise ValueError("no masks to describe")
    areas = np.array([area_ratio(m) for m in masks])
    comps = np.array([components(m) for m in masks])
    return MaskStats(
        n=len(masks),
        area_ratio_mean=float(areas.mean()),
        area_ratio_std=float(areas.std()),
        components_mean=float(comps.mean()),
        empty_fraction=float((areas == 0).mean()),
        area_ratio_min=float(areas.min()),
        area_ratio_max=float(areas.max()),
        components_max=int(comps.max()),
    )


@dataclass(frozen=True)
class MaskRange:
    """Where a synthetic mask must fall to be used for pairs: the class's real train
    masks' smallest and largest area ratio and their most 8-connected regions, widened
    by `factor` (area min / factor to max x factor; regions 1 to ceil(max x factor))."""

    area_min: float
    area_max: float
    components_max: int
    factor: float

    @classmethod
    def of(cls, real: list[np.ndarray], factor: float) -> MaskRange:
        s = stats([m for m in real if binary(m).any()])
        return cls(
            area_min=s.area_ratio_min / factor,
            area_max=min(1.0, s.area_ratio_max * factor),
            components_max=max(1, math.ceil(s.components_max * factor)),
            factor=factor,
        )

    def accepts(self, mask: np.ndarray) -> bool:
        area = area_ratio(mask)
        return self.area_min <= area <= self.area_max and 1 <= components(mask) <= (
            self.components_max
        )


def drop_reasons(
    methods: dict[str, dict], distance: str, min_accepted: float, max_distance_ratio: float
) -> dict[str, str]:
    """The methods a class drops, with the reason: fewer than `min_accepted` of the
    masks it made within range, or a distance to the val masks (`distance`, of all the
    masks it made) above `max_distance_ratio` x the best kept method's. `methods` maps a
    method to its masks.json entry ("made", "accepted", and the distance when measured)."""
    out = {}
    for method, m in methods.items():
        if m["made"] == 0 or m["accepted"] / m["made"] < min_accepted:
            out[method] = (
                f"{m['accepted']} of {m['made']} masks within the real masks' range "
                f"(fewer than {min_accepted:.0%})"
            )
    measured = {k: m[distance] for k, m in methods.items() if k not in out and distance in m}
    if measured:
        best = min(measured, key=measured.get)
        for method, d in measured.items():
            if d > max_distance_ratio * measured[best]:
                out[method] = (
                    f"{distance} to the val masks {d:.1f}, {d / measured[best]:.1f}x the best "
                    f"method's ({best}: {measured[best]:.1f}; limit {max_distance_ratio:g}x)"
                )
    return out


def hmi_space(masks: list[np.ndarray], tau: float = TAU) -> str:
    """DefectSynth's choice for a class: "latent" for large defects (mean area ratio
    >= tau), "image" for small ones (fine cracks, pits)."""
    return "latent" if stats(masks).area_ratio_mean >= tau else "image"


def _ordered(on: np.ndarray, rows_first: bool) -> np.ndarray:
    """White-pixel coordinates (N, 2) as (row, col), in scanline order along the chosen
    axis: consecutive points of a stroke along that axis are neighbours."""
    coords = np.argwhere(on)
    if not rows_first:
        coords = coords[np.lexsort((coords[:, 0], coords[:, 1]))]
    return coords


def _resample(coords: np.ndarray, n: int) -> np.ndarray:
    """`coords` linearly resampled to `n` points (n >= len: every point is kept)."""
    idx = np.rint(np.linspace(0, len(coords) - 1, n)).astype(int)
    return coords[idx]


def _line(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Integer points on the segment p-q, endpoints included, 8-connected."""
    steps = int(np.abs(q - p).max())
    if steps == 0:
        return p[None, :]
    t = np.linspace(0.0, 1.0, steps + 1)[:, None]
    return np.rint(p[None, :] * (1 - t) + q[None, :] * t).astype(int)


def interpolate(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Image-space interpolation between masks `a` and `b` (uint8, same shape).

    Both masks' white pixels are ordered along the axis the pair extends most in, the
    shorter list resampled to the longer's length, and paired points averaged:
    (1 - alpha) * a_i + alpha * b_i. Continuity: two consecutive points that are
    neighbours in both masks stay connected (the segment between their rounded
    positions is drawn), so a stroke in both stays a stroke in between; points that were
    apart in either mask (the next scanline, another region) are not joined. At alpha 0
    and 1 the result is `a` and `b` exactly.
    """
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha} must be in [0, 1]")
    on_a, on_b = binary(a), binary(b)
    if not on_a.any() or not on_b.any():
        raise ValueError("interpolation needs two non-empty masks")
    union = np.argwhere(on_a | on_b)
    height, width = union.max(0) - union.min(0)
    rows_first = height >= width
    pa, pb = _ordered(on_a, rows_first), _ordered(on_b, rows_first)
    n = max(len(pa), len(pb))
    pa, pb = _resample(pa, n), _resample(pb, n)
    points = np.rint((1 - alpha) * pa + alpha * pb).astype(int)
    out = np.zeros(a.shape, dtype=bool)
    out[points[:, 0], points[:, 1]] = True
    near_a = np.abs(np.diff(pa, axis=0)).max(1) <= 1
    near_b = np.abs(np.diff(pb, axis=0)).max(1) <= 1
    for i in np.flatnonzero(near_a & near_b):
        if np.abs(points[i + 1] - points[i]).max() > 1:  # rounding opened a gap
            seg = _line(points[i], points[i + 1])
            out[seg[:, 0], seg[:, 1]] = True
    return to_uint8(out)


def interpolations(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """`n` intermediate masks strictly between `a` and `b` (DefectSynth: 10 per pair)."""
    return [interpolate(a, b, k / (n + 1)) for k in range(1, n + 1)]


@dataclass(frozen=True)
class Perturbation:
    """Limits of one random perturbation (Valvano et al.: small shape perturbations)."""

    max_rotation: float = 15.0  # degrees
    max_shift: float = 0.05  # fraction of the side
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_alpha: float = 4.0  # displacement in pixels
    elastic_sigma: float = 6.0  # smoothness of the displacement field, pixels
    area_ratio: tuple[float, float] = (0.5, 2.0)  # perturbed area / source area
    tries: int = 20


def _warp(on: np.ndarray, rng: np.random.Generator, p: Perturbation) -> tuple[np.ndarray, int]:
    """The mask under one random affine + elastic map, and how many of its pixels the
    map sends off the image (sampled on a canvas padded by the image's size)."""
    h, w = on.shape
    angle = np.deg2rad(rng.uniform(-p.max_rotation, p.max_rotation))
    scale = rng.uniform(*p.scale)
    shift = rng.uniform(-p.max_shift, p.max_shift, 2) * (h, w)
    rows, cols = np.mgrid[-h : 2 * h, -w : 2 * w].astype(np.float64)  # output canvas
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    # inverse map: output pixel -> source pixel
    r, c = rows - centre[0] - shift[0], cols - centre[1] - shift[1]
    cos, sin = np.cos(angle), np.sin(angle)
    src_r = (cos * r + sin * c) / scale + centre[0]
    src_c = (-sin * r + cos * c) / scale + centre[1]
    for grid in (src_r, src_c):
        field = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), p.elastic_sigma)
        field *= p.elastic_alpha / max(np.abs(field).max(), 1e-12)
        grid += np.pad(field, ((h, h), (w, w)), mode="edge")
    # bilinear, then a low threshold: a 1-pixel stroke stays connected under rotation,
    # where nearest-neighbour sampling breaks it into dashes
    warped = ndimage.map_coordinates(on.astype(np.float32), [src_r, src_c], order=1, cval=0.0)
    canvas = warped > 0.3
    inside = canvas[h : 2 * h, w : 2 * w]
    return inside, int(canvas.sum() - inside.sum())


def perturb(
    mask: np.ndarray, rng: np.random.Generator, limits: Perturbation | None = None
) -> np.ndarray | None:
    """A randomly perturbed copy of `mask` (uint8 {0, 255}), or None when no draw within
    `limits.tries` keeps its area within the limits and every pixel on the image."""
    p = limits or Perturbation()
    on = binary(mask)
    area = on.sum()
    if area == 0:
        raise ValueError("cannot perturb an empty mask")
    for _ in range(p.tries):
        warped, lost = _warp(on, rng, p)
        ratio = warped.sum() / area
        if lost == 0 and p.area_ratio[0] <= ratio <= p.area_ratio[1]:
            return to_uint8(warped)
    return None


def coloured(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The plain conditioning image: the mask painted in its class colour on black,
    uint8 (H, W, 3)."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[binary(mask)] = colour
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    return img if img.ndim == 2 else img[..., :3] @ np.array([0.299, 0.587, 0.114])


def _resize(img: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = ndimage.zoom(img, zoom, order=order, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]]


def topological_driver(
    image: np.ndarray,
    mask: np.ndarray,
    colour: tuple[int, int, int],
    *,
    low_res: int = 64,
    block: int = 11,
    offset: float = 2.0,
    background_max: int = 50,
) -> np.ndarray:
    """Valvano et al.'s topological driver (4.2), float32 (H, W, 3) in [0, 1].

    The image is downscaled to `low_res` (longer side), made grayscale and binarised by
    adaptive thresholding (a pixel is 1 where it exceeds the mean of its `block` x
    `block` neighbourhood minus `offset`), resized back (nearest), scaled to
    0..`background_max` (of 255, so the mask "pops up"), the class-coloured mask painted
    on top, and the whole divided by 255.
    """
    h, w = mask.shape
    grey = _grey(image)
    if grey.shape != (h, w):
        raise ValueError(f"image {grey.shape} and mask {mask.shape} differ in size")
    k = low_res / max(h, w)
    small = _resize(grey, (max(1, round(h * k)), max(1, round(w * k))), order=1)
    local_mean = ndimage.uniform_filter(small, size=block, mode="reflect")
    topology = (small > local_mean - offset).astype(np.float64)
    driver = _resize(topology, (h, w), order=0) * background_max
    out = np.repeat(driver[..., None], 3, axis=2)
    out[binary(mask)] = colour
    return (out / 255.0).astype(np.float32)
