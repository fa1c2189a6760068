"""Mask synthesis and conditioning (defectgen.core.masks) on constructed and real masks."""

import numpy as np
import pytest
from PIL import Image

from defectgen.core import masks
from tests.conftest import REPO

SALIENCY = REPO.parent / "shared" / "data" / "sd-saliency-900" / "masks"


def _stroke(shape, start, end, width=1) -> np.ndarray:
    """A straight 8-connected stroke from start to end (row, col), `width` pixels."""
    out = np.zeros(shape, dtype=bool)
    for r, c in masks._line(np.array(start), np.array(end)):
        out[r, c : c + width] = True
    return masks.to_uint8(out)


def test_interpolation_ends_exactly_at_its_endpoints_and_keeps_a_stroke_connected():
    a = _stroke((64, 64), (5, 10), (55, 20))
    b = _stroke((64, 64), (8, 50), (60, 35))
    assert np.array_equal(masks.interpolate(a, b, 0.0), a)
    assert np.array_equal(masks.interpolate(a, b, 1.0), b)
    for mid in masks.interpolations(a, b, 9):
        assert set(np.unique(mid)) <= {0, 255}
        assert masks.components(mid) == 1  # continuity: the stroke stays one stroke
        # about as long as the strokes it comes from: no blob, no dust
        assert 0.8 * min(a.sum(), b.sum()) <= mid.sum() <= 1.6 * max(a.sum(), b.sum())
    # the midpoint lies between the two: its centre of mass is half-way (within a pixel)
    centre = [np.argwhere(m > 0).mean(0) for m in (a, masks.interpolate(a, b, 0.5), b)]
    assert np.abs(centre[1] - (centre[0] + centre[2]) / 2).max() < 1.5


def test_interpolation_refuses_bad_input():
    a = _stroke((16, 16), (1, 1), (10, 10))
    with pytest.raises(ValueError, match="shapes differ"):
        masks.interpolate(a, np.zeros((8, 8), np.uint8), 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        masks.interpolate(a, np.zeros_like(a), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        masks.interpolate(a, a, 1.5)


@pytest.mark.skipif(not SALIENCY.is_dir(), reason="../shared/data is not beside the repo")
def test_interpolation_between_real_scratch_masks_is_plausible():
    """SD-Saliency-900 scratches Sc_1..20: thin, 3.7 % of the image on average, below tau,
    so HMI interpolates them in image space (the whole class averages 7.0 %: latent)."""
    real = [np.asarray(Image.open(SALIENCY / f"Sc_{i}.png").convert("L")) for i in range(1, 21)]
    assert masks.hmi_space(real) == "image"
    a, b = real[0], real[1]
    mids = masks.interpolations(a, b, 10)
    low, high = sorted((masks.area_ratio(a), masks.area_ratio(b)))
    real_stats = masks.stats(real)
    for mid in mids:
        assert 0.7 * low <= masks.area_ratio(mid) <= 1.5 * high
        assert masks.components(mid) <= max(masks.components(a), masks.components(b)) + 2
    assert masks.stats(mids).empty_fraction == 0.0
    assert real_stats.n == 20 and real_stats.empty_fraction == 0.0


def test_hmi_space_follows_the_mean_area_ratio():
    small = np.zeros((100, 100), np.uint8)
    small[10:15, 10:20] = 255  # 0.5 %
    large = np.zeros((100, 100), np.uint8)
    large[10:40, 10:40] = 255  # 9 %
    assert masks.hmi_space([small, small]) == "image"
    assert masks.hmi_space([large, small]) == "image"  # mean 4.75 % < 5.3 %
    assert masks.hmi_space([large, large]) == "latent"


def test_perturbation_stays_binary_in_bounds_and_within_its_area_limits():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 25:35] = 255
    rng = np.random.default_rng(0)
    outs = [masks.perturb(mask, rng) for _ in range(8)]
    assert all(o is not None for o in outs)
    for out in outs:
        assert out.shape == mask.shape and out.dtype == np.uint8
        assert set(np.unique(out)) == {0, 255}
        assert 0.5 <= (out > 0).sum() / (mask > 0).sum() <= 2.0
    assert any(not np.array_equal(o, mask) for o in outs)
    # the same seed, the same perturbations
    assert np.array_equal(masks.perturb(mask, np.random.default_rng(0)), outs[0])


def test_perturbation_never_pushes_a_mask_off_the_image():
    edge = np.zeros((32, 32), np.uint8)
    edge[:, 0:3] = 255  # touches the border: most draws would lose pixels
    limits = masks.Perturbation(max_rotation=30, max_shift=0.2, tries=5)
    for seed in range(10):
        out = masks.perturb(edge, np.random.default_rng(seed), limits)
        if out is not None:  # kept: nothing was lost, so area stays within limits
            assert 0.5 <= (out > 0).sum() / (edge > 0).sum() <= 2.0
    frozen = masks.Perturbation(max_rotation=0, max_shift=0, scale=(3.0, 3.0), tries=3)
    assert masks.perturb(edge, np.random.default_rng(0), frozen) is None  # 3x: off image


def test_mask_statistics_count_regions_and_area():
    mask = np.zeros((10, 10), np.uint8)
    mask[0, 0] = mask[1, 1] = 255  # diagonal neighbours: one 8-connected region
    mask[5:7, 5:7] = 255
    assert masks.components(mask) == 2
    s = masks.stats([mask, np.zeros_like(mask)])
    assert s.area_ratio_mean == pytest.approx(0.03) and s.empty_fraction == 0.5
    assert s.components_mean == 1.0


def test_a_mask_is_fit_for_pairs_only_within_the_real_masks_widened_range():
    def squares(*sides):  # one square region per side, on a 20 x 20 image
        m = np.zeros((20, 20), np.uint8)
        col = 0
        for side in sides:
            m[:side, col : col + side] = 255
            col += side + 1
        return m

    real = [squares(4), squares(6, 5), np.zeros((20, 20), np.uint8)]  # 16/400; 61/400
    r = masks.MaskRange.of(real, factor=1.5)  # the empty real mask says nothing of shape
    assert r.area_min == pytest.approx(0.04 / 1.5) and r.area_max == pytest.approx(61 / 400 * 1.5)
    assert r.components_max == 3  # ceil(2 x 1.5)
    assert r.accepts(squares(4)) and r.accepts(squares(9))  # 81/400 = 0.2025
    assert not r.accepts(squares(10))  # 100/400 = 0.25: larger than any real one allows
    assert not r.accepts(squares(2))  # 4/400 = 0.01 < 0.0267
    assert not r.accepts(squares(2, 2, 2, 2))  # 4 regions > 3
    assert not r.accepts(np.zeros((20, 20), np.uint8))
    assert masks.MaskRange.of(real, factor=10.0).area_max == 1.0


def test_a_class_drops_methods_with_few_masks_in_range_or_far_from_the_val_masks():
    fd = "fd_effnet_lite0"
    methods = {
        "ddpm": {"made": 10, "accepted": 2, fd: 10.0},  # mostly out of range; its low
        "perturb": {"made": 10, "accepted": 9, fd: 50.0},  # distance does not count
        "hmi": {"made": 10, "accepted": 10, fd: 120.0},  # 2.4x the best kept method
        "other": {"made": 10, "accepted": 5, fd: 99.0},  # half in range, 1.98x: kept
        "few": {"made": 1, "accepted": 1},  # no distance measured: judged by range only
    }
    drops = masks.drop_reasons(methods, fd, min_accepted=0.5, max_distance_ratio=2.0)
    assert sorted(drops) == ["ddpm", "hmi"]
    assert drops["ddpm"] == "2 of 10 masks within the real masks' range (fewer than 50%)"
    assert drops["hmi"] == (
        "fd_effnet_lite0 to the val masks 120.0, 2.4x the best method's (perturb: 50.0; limit 2x)"
    )
    assert masks.drop_reasons({"x": {"made": 0, "accepted": 0}}, fd, 0.0, 2.0) == {
        "x": "0 of 0 masks within the real masks' range (fewer than 0%)"
    }


def test_topological_driver_follows_the_recipe_on_a_constructed_image():
    """Left half dark, right half bright, a bright square in the dark half: the driver
    is 50/255 where a pixel beats its local mean (minus the offset), 0 elsewhere, and the
    mask in its class colour on top."""
    image = np.zeros((64, 64), np.uint8)
    image[:, 32:] = 200
    image[8:16, 8:16] = 200
    mask = np.zeros((64, 64), np.uint8)
    mask[40:44, 40:50] = 255
    driver = masks.topological_driver(image, mask, (255, 0, 0), low_res=64, block=5)
    assert driver.dtype == np.float32 and driver.shape == (64, 64, 3)
    assert set(np.unique(driver[..., 1])) <= {0.0, np.float32(50 / 255)}
    # flat regions equal their local mean, so they pass (> mean - offset): 50
    assert driver[30, 5, 0] == pytest.approx(50 / 255)  # flat dark
    assert driver[5, 50, 0] == pytest.approx(50 / 255)  # flat bright
    # dark pixels next to the bright edge fall below their local mean: 0
    assert driver[30, 31, 0] == 0.0 and driver[12, 7, 0] == 0.0
    # the mask, painted in its colour
    assert np.allclose(driver[41, 45], [1.0, 0.0, 0.0])
    assert not np.allclose(driver[39, 45], [1.0, 0.0, 0.0])
    # an RGB image gives the same driver as its grayscale
    rgb = np.repeat(image[..., None], 3, axis=2)
    assert np.array_equal(masks.topological_driver(rgb, mask, (255, 0, 0), block=5), driver)


def test_coloured_mask_paints_only_the_defect():
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 2] = 255
    out = masks.coloured(mask, (10, 20, 30))
    assert out[1, 2].tolist() == [10, 20, 30] and out.sum() == 60
