"""The U-Net that judges image + mask pairs (defectgen.core.segment), on constructed data."""

import numpy as np
import pytest
import torch

from defectgen.core import segment, segmetrics


def _pairs(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Textured background with one bright blob; the mask is the blob."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img = rng.normal(90, 20, (32, 32)).clip(0, 255)
        m = np.zeros((32, 32), np.uint8)
        r, c = rng.integers(2, 22, 2)
        h, w = rng.integers(4, 9, 2)
        m[r : r + h, c : c + w] = 255
        img[m > 0] = rng.normal(200, 15, (m > 0).sum()).clip(0, 255)
        images.append(img.astype(np.uint8))
        masks.append(m)
    return images, masks


def test_unet_keeps_the_input_size():
    net = segment.UNet(3, (8, 16, 32))
    assert net(torch.zeros(2, 3, 32, 48)).shape == (2, 32, 48)


def test_unet_learns_to_segment_and_predicts_probabilities():
    images, masks = _pairs(48, 0)
    fit = segment.fit(images[:32], masks[:32], steps=60, batch_size=8, lr=3e-3, seed=0)
    assert fit.losses[-1] < 0.5 * fit.losses[0]
    maps = segment.predict(fit.model, images[32:])
    assert all(m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1 for m in maps)
    scores = segmetrics.evaluate(maps, [m > 0 for m in masks[32:]])
    assert scores["iou"] > 0.6 and scores["pixel_auroc"] > 0.95  # held-out images
    again = segment.fit(images[:32], masks[:32], steps=60, batch_size=8, lr=3e-3, seed=0)
    assert again.losses == pytest.approx(fit.losses)  # reproducible from the seed
    assert len(fit.losses) == segment.LOSS_POINTS
