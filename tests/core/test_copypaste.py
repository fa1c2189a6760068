"""Copy-paste (core.copypaste) on constructed images: the annotation is exactly the pasted
defect (with the background's own), only pixels within the blend's reach change, the
background's own defect is never touched, and backgrounds come from the right rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from defectgen.config import CopyPasteConfig
from defectgen.core import arms, copypaste


def _scene(seed: int):
    rng = np.random.default_rng(seed)
    source = rng.integers(80, 180, (40, 40, 3)).astype(np.uint8)
    source_mask = np.zeros((40, 40), np.uint8)
    source_mask[6:14, 9:15] = 255
    source_mask[14:17, 12:14] = 255  # an L: not a box
    source[source_mask > 0] = rng.integers(200, 255, (int((source_mask > 0).sum()), 3))
    background = rng.integers(30, 70, (40, 40, 3)).astype(np.uint8)
    own = np.zeros((40, 40), np.uint8)
    own[24:36, 24:36] = 255
    return source, source_mask, background, own


def test_the_annotation_is_the_pasted_defect_and_only_its_surround_changes():
    cfg = CopyPasteConfig()
    for seed in range(6):
        source, source_mask, background, own = _scene(seed)
        rng = np.random.default_rng(seed)
        image, mask, region, (dy, dx) = copypaste.paste(cfg, source, source_mask, background,
                                                         own, rng)  # fmt: skip
        # the region is the source's mask moved by the offset, pixel for pixel
        moved = np.zeros_like(region)
        ys, xs = np.nonzero(source_mask > 127)
        moved[ys + dy, xs + dx] = True
        assert np.array_equal(region, moved)
        assert np.array_equal(mask > 0, region | (own > 0))
        assert set(np.unique(mask)) <= {0, 255}
        # pixels beyond the blend's reach, and the background's own defect, are untouched
        far = ndimage.distance_transform_edt(~region) > copypaste.reach(cfg)
        assert np.array_equal(image[far], background[far])
        assert np.array_equal(image[own > 0], background[own > 0])
        assert not (ndimage.binary_dilation(own > 0, iterations=cfg.margin) & region).any()
        # the defect came along pixel for pixel
        assert np.array_equal(image[region], source[source_mask > 127])


def test_a_grey_image_stays_grey_and_a_defect_with_no_room_is_refused():
    cfg = CopyPasteConfig()
    source, source_mask, background, own = _scene(0)
    image, *_ = copypaste.paste(cfg, source[..., 0], source_mask, background[..., 0], own,
                                np.random.default_rng(0))  # fmt: skip
    assert image.shape == (40, 40) and image.dtype == np.uint8
    full = np.full((40, 40), 255, np.uint8)  # the background is all defect
    assert copypaste.paste(cfg, source, source_mask, background, full,
                           np.random.default_rng(0)) is None  # fmt: skip
    empty = np.zeros((40, 40), np.uint8)  # nothing to cut
    assert copypaste.paste(cfg, source, empty, background, None, np.random.default_rng(0)) is None


def test_backgrounds_are_defect_free_rows_when_there_are_any_else_the_class_s_others():
    rows = [{"id": f"{c}{i}", "label": c} for c in ("crack", "pit") for i in range(3)]
    drawn = copypaste.draw(rows, {"crack": 4}, normal=set(), rng=np.random.default_rng(0))
    assert len(drawn) == 4 and {s["id"] for s, _ in drawn} == {"crack0", "crack1", "crack2"}
    for source, backgrounds in drawn:
        assert {b["id"] for b in backgrounds} == {"crack0", "crack1", "crack2"} - {source["id"]}
    rows += [{"id": f"ok{i}", "label": "ok"} for i in range(2)]
    drawn = copypaste.draw(rows, {"crack": 2, "pit": 1}, normal={"ok"},
                           rng=np.random.default_rng(0))  # fmt: skip
    assert [s["label"] for s, _ in drawn] == ["crack", "crack", "pit"]
    assert all({b["id"] for b in bgs} == {"ok0", "ok1"} for _, bgs in drawn)


def test_make_moves_to_the_next_background_then_pastes_over_a_defect_and_counts_both():
    cfg = CopyPasteConfig()
    source, source_mask, background, own = _scene(1)
    full = np.full((40, 40), 255, np.uint8)
    empty = np.zeros((40, 40), np.uint8)
    pixels = {"s": (source, source_mask), "busy": (background, full),
              "free": (background, own), "none": (source, empty)}  # fmt: skip
    rng = np.random.default_rng(0)
    pasted, counts = copypaste.make(cfg, [({"id": "s"}, [{"id": "busy"}, {"id": "free"}])],
                                    pixels, rng)  # fmt: skip
    assert counts == {"overlapping": 0, "short": 0}
    assert [(p.source, p.background) for p in pasted] == [("s", "free")]
    # no room anywhere: over part of the first background's defect, annotation the union
    pasted, counts = copypaste.make(cfg, [({"id": "s"}, [{"id": "busy"}])], pixels, rng)
    assert counts == {"overlapping": 1, "short": 0}
    (p,) = pasted
    assert np.array_equal(p.image[p.region], source[source_mask > 127])
    assert (p.mask == 255).all()
    # a source without a defect has nothing to cut
    pasted, counts = copypaste.make(cfg, [({"id": "none"}, [{"id": "free"}])], pixels, rng)
    assert pasted == [] and counts == {"overlapping": 0, "short": 1}


def test_an_arm_s_records_sum_up_per_seed_and_name_every_row_used():
    cfg = CopyPasteConfig()
    source, source_mask, background, own = _scene(2)
    pixels = {"s": (source, source_mask), "b": (background, own)}
    rng = np.random.default_rng(0)
    records = []
    for _ in range(2):  # two seeds' training sets
        pasted, counts = copypaste.make(cfg, [({"id": "s"}, [{"id": "b"}])], pixels, rng)
        records.append(copypaste.record(pasted, counts))
    (paste,) = records[0]["pasted"]
    assert (paste["source"], paste["background"]) == ("s", "b") and len(paste["offset"]) == 2
    assert copypaste.summarise(records) == {
        "short": [0, 0], "overlapping": [0, 0], "pasted_from": ["b", "s"]
    }  # fmt: skip
    # a record without provenance (resumed from older code) is refused, saying what to do
    with pytest.raises(ValueError, match="delete the stage's .resume folder"):
        copypaste.summarise([*records, {"short": 0, "overlapping": 0}])


def test_draws_are_whole_shuffled_passes_an_item_repeats_only_after_all_were_used():
    rng = np.random.default_rng(3)
    order = arms.passes(4, 10, rng)
    assert len(order) == 10
    assert sorted(order[:4]) == sorted(order[4:8]) == [0, 1, 2, 3]  # two whole passes
    assert len(set(order[8:])) == 2  # then part of a third, without repeats
