"""core/sweep on real steel images: the sweep finds a planted best cell through the real
extractor, skips cells that copy their parents, and draws its heatmap."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from defectgen.core import distances
from defectgen.core import sweep as sweep_core
from tests.conftest import shared_data

STRENGTHS = [0.3, 0.5, 0.7]
GUIDANCES = [2.0, 4.0, 6.0]
PLANTED = (0.5, 6.0)


@pytest.fixture(scope="module")
def scored() -> list[dict]:
    """A 3 x 3 grid whose probes are real NEU 'patches' images noised in proportion to the
    cell's grid distance from PLANTED (where they are clean), scored against other real
    images of the class."""
    paths = sorted((shared_data("neu-det") / "images").glob("patches_*.jpg"))[:42]
    images = [np.asarray(Image.open(p).convert("L").resize((96, 96))) for p in paths]
    extractor = distances.make_extractor(distances.EFFNET, weights=None, device=torch.device("cpu"))
    reference = distances.extract(extractor, images[:30])
    probes = images[30:]
    out = []
    for cell in sweep_core.grid(STRENGTHS, GUIDANCES, "img2img"):
        steps = abs(STRENGTHS.index(cell.strength) - STRENGTHS.index(PLANTED[0])) + abs(
            GUIDANCES.index(cell.guidance) - GUIDANCES.index(PLANTED[1])
        )
        rng = np.random.default_rng(len(out))
        noised = [
            np.clip(x + rng.normal(0, 15.0 * steps, x.shape), 0, 255).astype(np.uint8)
            for x in probes
        ]
        feats = distances.extract(extractor, noised)
        numbers = sweep_core.score(
            feats, reference, torch.zeros(len(probes), dtype=torch.bool), subsets=10, seed=0
        )
        out.append({"strength": cell.strength, "guidance": cell.guidance, **numbers})
    return out


def test_the_sweep_finds_the_planted_cell(scored):
    best, reason = sweep_core.choose(scored, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) == PLANTED
    assert "lowest fd" in reason and "9 eligible" in reason
    # the planted cell is clean, its neighbours are noised: it stands out of the noise
    assert "of 1 cells within noise" in reason


def test_a_noisier_metric_ties_more_cells_and_takes_the_gentlest(scored):
    """The kernel distance of 12 probes is noisier: the planted cell is still the lowest,
    but its neighbours are within its bootstrap spread, so the lowest strength among
    the tied cells is taken (and would be, whichever of them a reseed made lowest)."""
    lowest = min(scored, key=lambda c: c["kd"])
    assert (lowest["strength"], lowest["guidance"]) == PLANTED
    best, reason = sweep_core.choose(scored, metric="kd", max_duplicate_fraction=0.5)
    band = sweep_core.NOISE_Z * lowest["kd_spread"]
    tied = [c for c in scored if c["kd"] <= lowest["kd"] + band]
    assert len(tied) > 1 and f"of {len(tied)} cells within noise" in reason
    assert best["strength"] == min(c["strength"] for c in tied) and best in tied


def test_cells_that_copy_their_parents_are_not_chosen(scored):
    copying = [
        {**c, "duplicate_fraction": 0.75 if (c["strength"], c["guidance"]) == PLANTED else 0.0}
        for c in scored
    ]
    best, reason = sweep_core.choose(copying, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) != PLANTED
    # the rest are noised, several within noise of the lowest: the gentlest of those
    eligible = [c for c in copying if c["duplicate_fraction"] <= 0.5]
    lowest = min(eligible, key=lambda c: c["fd"])
    tied = [c for c in eligible if c["fd"] <= lowest["fd"] + 1.96 * lowest["fd_spread"]]
    gentlest = min(tied, key=lambda c: (c["strength"], c["guidance"]))
    assert best is gentlest and "1 excluded for copying" in reason
    all_copy = [{**c, "duplicate_fraction": 1.0} for c in scored]
    best, reason = sweep_core.choose(all_copy, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) == PLANTED and "every cell copies" in reason


def test_the_fast_frechet_equals_torch_fidelitys_and_spread_is_measured(scored):
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(0, 1, (12, 1280))).float()
    b = torch.from_numpy(rng.normal(0.3, 1.2, (40, 1280))).float()
    assert sweep_core.frechet_fast(a, b) == pytest.approx(distances.frechet(a, b), rel=1e-4)
    assert all(c["fd_spread"] > 0 and c["kd_spread"] > 0 for c in scored)


def test_the_pick_is_stable_when_cells_are_within_noise():
    """A reseed reorders cells whose distances are within each other's noise: the pick
    (the lowest strength among them) does not move; a cell clearly better still wins."""
    cells = [
        {"strength": s, "guidance": g, "fd": 100.0, "fd_spread": 4.0, "duplicate_fraction": 0.0}
        for s in (0.3, 0.5, 0.7) for g in (2.0, 4.0)
    ]  # fmt: skip
    picks = set()
    for seed in range(5):  # five "reseeds": the same cells, fd jittered within 1 std
        rng = np.random.default_rng(seed)
        jittered = [{**c, "fd": c["fd"] + rng.uniform(-4.0, 4.0)} for c in cells]
        best, reason = sweep_core.choose(jittered, metric="fd", max_duplicate_fraction=0.5)
        picks.add((best["strength"], best["guidance"]))
        assert "within noise" in reason
    assert picks == {(0.3, 2.0)}
    clear = [{**c, "fd": 60.0} if (c["strength"], c["guidance"]) == (0.7, 4.0) else c
             for c in cells]  # fmt: skip
    best, _ = sweep_core.choose(clear, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) == (0.7, 4.0)


def test_grid_and_heatmap(scored):
    assert len(sweep_core.grid(STRENGTHS, GUIDANCES, "img2img")) == 9
    assert sweep_core.grid(STRENGTHS, GUIDANCES, "txt2img") == [
        sweep_core.Cell(None, g) for g in GUIDANCES
    ]
    best, _ = sweep_core.choose(scored, metric="fd", max_duplicate_fraction=0.5)
    png = sweep_core.heatmap(
        scored, metric="fd", metric_name="fd_effnet_lite0", title="patches", chosen=best
    )
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape[1] > 200 and image.shape[0] > 150
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 100  # the chosen cell's outline
    # txt2img: one row of cells without a strength
    txt = [{**c, "strength": None} for c in scored if c["strength"] == 0.5]
    best, _ = sweep_core.choose(txt, metric="fd", max_duplicate_fraction=0.5)
    assert best["guidance"] == 6.0
    png = sweep_core.heatmap(txt, metric="fd", metric_name="fd", title="txt2img", chosen=best)
    assert Image.open(io.BytesIO(png)).size[1] < image.shape[0]  # one row, not three


def test_the_probe_grid_labels_each_cell_and_keeps_the_saved_order():
    """Tiles saved in the sweep's order (strength rows as configured, not sorted) come out
    as a labelled figure with one panel per cell."""
    from defectgen.core.images import decode_image

    cells = [{"strength": s, "guidance": g} for s in (0.7, 0.3) for g in (4.0, 1.5)]
    tiles = np.concatenate(
        [np.concatenate([np.full((8, 8), 60 * (2 * i + j), np.uint8) for j in range(2)], axis=1)
         for i in range(2)], axis=0)  # fmt: skip
    png = sweep_core.probe_grid(tiles, cells, {"strength": 0.3, "guidance": 1.5})
    pixels, _ = decode_image(png)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100  # a figure, not the 16 x 16 tiles
    # the outline is on the chosen cell: second row (strength 0.3 as saved, not sorted),
    # second column (guidance 1.5)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    rows, cols = np.nonzero(red)
    assert rows.size and rows.mean() > pixels.shape[0] / 2 and cols.mean() > pixels.shape[1] / 2
    # and on the tile of that cell: the panel's grey is tile 3's (60 * 3 = 180)
    inside = pixels[rows.min() + 6 : rows.max() - 6, cols.min() + 6 : cols.max() - 6]
    assert abs(float(np.median(inside[..., 0])) - 180) < 8
    text_cells = [{"strength": None, "guidance": g} for g in (4.0, 1.5)]
    one_row = sweep_core.probe_grid(tiles[:8], text_cells, {"strength": None, "guidance": 4.0})
    assert decode_image(one_row)[0].shape[1] > decode_image(one_row)[0].shape[0]  # txt2img: 1 row
