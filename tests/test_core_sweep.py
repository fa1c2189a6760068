"""core/sweep on real steel images: the sweep finds a planted best cell through the real
extractor, skips cells that copy their parents, and draws its heatmap."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from defectgen.core import metrics
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
    extractor = metrics.make_extractor(metrics.EFFNET, weights=None, device=torch.device("cpu"))
    reference = metrics.extract(extractor, images[:30])
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
        feats = metrics.extract(extractor, noised)
        numbers = sweep_core.score(
            feats, reference, torch.zeros(len(probes), dtype=torch.bool), subsets=10, seed=0
        )
        out.append({"strength": cell.strength, "guidance": cell.guidance, **numbers})
    return out


@pytest.mark.parametrize("metric", ["fd", "kd"])
def test_the_sweep_finds_the_planted_cell(scored, metric):
    best, reason = sweep_core.choose(scored, metric=metric, max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) == PLANTED
    assert reason.startswith(f"lowest {metric}") and "9 eligible" in reason


def test_cells_that_copy_their_parents_are_not_chosen(scored):
    copying = [
        {**c, "duplicate_fraction": 0.75 if (c["strength"], c["guidance"]) == PLANTED else 0.0}
        for c in scored
    ]
    best, reason = sweep_core.choose(copying, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) != PLANTED
    neighbours = {(0.3, 6.0), (0.7, 6.0), (0.5, 4.0)}  # one grid step from the planted cell
    assert (best["strength"], best["guidance"]) in neighbours
    assert "1 excluded for copying" in reason
    all_copy = [{**c, "duplicate_fraction": 1.0} for c in scored]
    best, reason = sweep_core.choose(all_copy, metric="fd", max_duplicate_fraction=0.5)
    assert (best["strength"], best["guidance"]) == PLANTED and "every cell copies" in reason


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
