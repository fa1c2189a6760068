import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from defectgen import artifacts, manifest
from defectgen.core.images import decode_image, mask_shape, pixel_id
from defectgen.errors import DataError
from tests.conftest import make_params, run_stage, save, texture


def _run(root: Path, tmp: Path, layout="folders", **sections) -> tuple[list[dict], dict, Path]:
    params = make_params(layout, root, **sections)
    run_stage("ingest", params, out_dir=tmp / "ingested")
    out = tmp / "pre"
    metrics = run_stage("preprocess", params, ingested=tmp / "ingested", out_dir=out)
    return manifest.read_rows(out), metrics, out


def test_resize_colour_split_and_subset(folders_dataset: Path, tmp_path: Path):
    rows, metrics, out = _run(
        folders_dataset,
        tmp_path,
        preprocess={"image_size": 16, "color": "rgb", "subset": {"alpha": 0.5}},
    )
    assert len(rows) == metrics["n_images"] == 36
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 36
    for row in rows:
        px, _ = decode_image((out / row["path"]).read_bytes())
        assert px.shape == (16, 16, 3) and row["channels"] == 3
        assert pixel_id(px) == row["id"] and row["raw_id"] != row["id"]
        assert row["in_subset"] is False or row["split"] == "train"
    for label in ("crack", "dent", "scratch"):
        n_train = sum(1 for r in rows if r["label"] == label and r["split"] == "train")
        n_sub = sum(1 for r in rows if r["label"] == label and r["in_subset"])
        assert n_sub == -(-n_train // 2)  # ceil(alpha * n)
    counts = json.loads((out / artifacts.SPLIT_COUNTS_JSON).read_text())
    assert counts["crack"]["train"] == metrics["count/train/crack"]


def test_split_is_stable_when_images_are_added(folders_dataset: Path, tmp_path: Path):
    rows1, _, _ = _run(folders_dataset, tmp_path / "a")
    for i in range(20):
        save(texture(9000 + i), folders_dataset / "crack" / f"new_{i}.png")
    rows2, _, _ = _run(folders_dataset, tmp_path / "b")
    before = {r["raw_id"]: r["split"] for r in rows1}
    after = {r["raw_id"]: r["split"] for r in rows2}
    assert len(after) == len(before) + 20
    assert all(after[k] == v for k, v in before.items())
    tests1 = {r["raw_id"] for r in rows1 if r["split"] == "test"}
    assert tests1 <= {r["raw_id"] for r in rows2 if r["split"] == "test"}  # test stays frozen


def test_masks_follow_their_images_and_stay_binary(mask_dataset: Path, tmp_path: Path):
    rows, _, out = _run(
        mask_dataset,
        tmp_path,
        layout="image_mask",
        data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 20},
    )
    assert len(rows) == 16
    ing = {r["id"]: r for r in manifest.read_rows(tmp_path / "ingested")}
    for row in rows:
        mask, _ = decode_image((out / row["mask_path"]).read_bytes())
        assert mask.shape == (20, 20) and set(np.unique(mask).tolist()) <= {0, 255}
        raw_mask, _ = decode_image(
            (tmp_path / "ingested" / ing[row["raw_id"]]["mask_path"]).read_bytes()
        )
        # 40 -> 20 by area: a blob (one rectangle) is foreground where at least half of
        # an output pixel's 2 x 2 source block is
        share = (raw_mask > 127).reshape(20, 2, 20, 2).mean(axis=(1, 3))
        assert np.array_equal(mask > 127, share >= 0.5)


def _billet(seed: int) -> np.ndarray:
    """A bright 40 x 120 object on a dark 80 x 160 background, textured."""
    img = np.full((80, 160), 20, np.uint8)
    img[20:60, 20:140] = 180 + (texture(seed, (120, 40)) // 4)
    return img


def test_roi_crop_tiles_share_a_split_and_boxes_move(tmp_path: Path):
    root = tmp_path / "billets"
    for i in range(10):
        save(_billet(i), root / "slag" / f"b{i}.png")
    rows, metrics, out = _run(
        root,
        tmp_path,
        preprocess={"image_size": 32, "roi": {"enabled": True}},
    )
    assert len(rows) == 30  # each 120 x 40 object -> 3 square tiles
    by_raw = Counter(r["raw_id"] for r in rows)
    assert set(by_raw.values()) == {3}
    for raw_id in by_raw:
        assert len({r["split"] for r in rows if r["raw_id"] == raw_id}) == 1
    px, _ = decode_image((out / rows[0]["path"]).read_bytes())
    assert px.shape == (32, 32) and px.min() >= 150  # only the object, no background


def test_roi_drops_tiles_without_defect_pixels(tmp_path: Path):
    root = tmp_path / "billets"
    for i in range(4):
        save(_billet(i), root / "images" / f"Sc_{i}.png")
        m = np.zeros((80, 160), np.uint8)
        m[30:40, 30:50] = 255  # defect only in the first tile
        save(m, root / "masks" / f"Sc_{i}.png")
    rows, metrics, _ = _run(
        root,
        tmp_path,
        layout="image_mask",
        data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 32, "roi": {"enabled": True}},
    )
    assert len(rows) == 4 and metrics["n_dropped_tiles"] == 8


def test_boxes_scale_with_resize(tmp_path: Path):
    root = tmp_path / "voc"
    save(texture(1, (40, 40)), root / "images" / "a_1.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "a_1.xml").write_text(
        "<annotation><object><name>a</name><bndbox><xmin>11</xmin><ymin>1</ymin>"
        "<xmax>20</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    rows, _, _ = _run(
        root,
        tmp_path,
        layout="voc",
        data={"label_from": "prefix"},
        preprocess={"image_size": 20},
    )
    assert rows[0]["boxes"] == [{"label": "a", "x0": 5.0, "y0": 0.0, "x1": 10.0, "y1": 20.0}]


def test_a_normal_class_the_dataset_lacks_is_named(folders_dataset: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"normal_classes lists \['ok'\].*its classes are"):
        _run(folders_dataset, tmp_path, data={"normal_classes": ["ok"]})


def line_mask(shape: tuple[int, int], width: int, kind: str) -> np.ndarray:
    """A long thin defect drawn with PIL: a horizontal, diagonal or curved line."""
    from PIL import Image, ImageDraw

    h, w = shape
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if kind == "horizontal":
        draw.line([(w * 0.1, h * 0.4), (w * 0.9, h * 0.4)], fill=255, width=width)
    elif kind == "diagonal":
        draw.line([(w * 0.1, h * 0.15), (w * 0.85, h * 0.9)], fill=255, width=width)
    else:  # a crack that bends
        xs = np.linspace(w * 0.1, w * 0.9, 60)
        ys = h * 0.5 + h * 0.25 * np.sin(xs / w * 2 * np.pi)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255, width=width)
    return np.asarray(img)


@pytest.mark.parametrize("factor", [8, 16])
@pytest.mark.parametrize("kind", ["horizontal", "diagonal", "curve"])
@pytest.mark.parametrize("width", [1, 2])
def test_a_thin_crack_stays_one_region_of_its_length_after_downscaling(factor, kind, width):

    from defectgen.core.images import resize_mask

    size = 32
    mask = line_mask((size * factor, size * factor), width, kind)
    small = resize_mask(mask, size)
    assert set(np.unique(small).tolist()) == {0, 255}
    assert mask_shape(mask)[0] == 1 and mask_shape(small)[0] == 1  # one connected region

    def extent(m: np.ndarray, scale: float) -> float:  # the region's bounding-box diagonal
        ys, xs = np.nonzero(m > 127)
        return float(np.hypot(np.ptp(xs) + 1, np.ptp(ys) + 1)) * scale

    assert extent(small, factor) == pytest.approx(extent(mask, 1), rel=0.10)


def test_nearest_neighbour_sampling_as_before_would_lose_the_crack():
    from PIL import Image

    mask = line_mask((256, 256), 1, "horizontal")
    nearest = np.asarray(Image.fromarray(mask).resize((32, 32), Image.Resampling.NEAREST))
    assert mask_shape(nearest) == (0, 0.0)


def test_the_report_counts_regions_before_and_after_and_names_squashed_images(tmp_path):
    # 1:3 images (30 x 90) with a 1 px crack each, and one with a defect of 2 px
    root = tmp_path / "thin"
    for i in range(4):
        save(texture(i, (90, 30)), root / "images" / f"crack_{i}.png")
        save(line_mask((30, 90), 1, "horizontal"), root / "masks" / f"crack_{i}.png")
    dot = np.zeros((30, 90), np.uint8)
    dot[10, 40:42] = 255
    save(texture(9, (90, 30)), root / "images" / "crack_9.png")
    save(dot, root / "masks" / "crack_9.png")
    rows, metrics, out = _run(root, tmp_path, layout="image_mask",
                              data={"label_from": "prefix", "masks_required": True},
                              preprocess={"image_size": 16, "resize": "squash"})  # fmt: skip
    report = json.loads((out / artifacts.PREPROCESS_REPORT_JSON).read_text())
    crack = report["masks"]["crack"]
    assert crack["with_defect"] == 5
    assert crack["regions_median_before"] == crack["regions_median_after"] == 1
    # the 2 px defect stays: every mask keeps foreground after the resize
    for row in rows:
        mask, _ = decode_image((out / row["mask_path"]).read_bytes())
        assert mask.any()
    assert report["aspect_changed"]["count"] == 5 == metrics["n_aspect_changed"]
    assert report["aspect_changed"]["worst_ratio"] == pytest.approx(3.0)


def _dots(tmp_path: Path, empty_mask: str) -> tuple[list[dict], dict, Path, dict]:
    """3 images with a 2 px crack and crack_9 with a 1 px defect: 1/64 of a 16 px output
    pixel of its 128 px image, which the resize would empty."""
    root = tmp_path / "dots"
    for i in range(3):
        save(texture(i, (128, 128)), root / "images" / f"crack_{i}.png")
        save(line_mask((128, 128), 2, "horizontal"), root / "masks" / f"crack_{i}.png")
    dot = np.zeros((128, 128), np.uint8)
    dot[61, 67] = 255
    save(texture(9, (128, 128)), root / "images" / "crack_9.png")
    save(dot, root / "masks" / "crack_9.png")
    rows, metrics, out = _run(root, tmp_path, layout="image_mask",
                              data={"label_from": "prefix", "masks_required": True},
                              preprocess={"image_size": 16, "empty_mask": empty_mask})  # fmt: skip
    report = json.loads((out / artifacts.PREPROCESS_REPORT_JSON).read_text())
    assert report["masks_lost"]["handled"] == empty_mask  # named by file either way
    assert [Path(f).name for f in report["masks_lost"]["files"]] == ["crack_9.png"]
    assert metrics["n_masks_lost"] == 1
    return rows, metrics, out, report["masks"]["crack"]


def test_a_defect_under_half_an_output_pixel_keeps_one_pixel(tmp_path: Path):
    rows, _, out, crack = _dots(tmp_path, "keep")
    (row,) = [r for r in rows if Path(r["original_path"]).name == "crack_9.png"]
    assert mask_shape(decode_image((out / row["mask_path"]).read_bytes())[0]) == (1, 1 / 256)
    assert crack["with_defect"] == 4 and crack["kept_at_one_pixel"] == 1


def test_a_defect_under_half_an_output_pixel_skips_its_image_when_asked(tmp_path: Path):
    rows, metrics, _, crack = _dots(tmp_path, "skip")
    assert sorted(Path(r["original_path"]).name for r in rows) == [
        "crack_0.png", "crack_1.png", "crack_2.png"
    ]  # fmt: skip
    assert metrics["n_images"] == 3
    assert crack["with_defect"] == 3 and crack["kept_at_one_pixel"] == 0


def test_a_box_smaller_than_a_pixel_after_the_resize_is_kept_one_pixel_wide(tmp_path: Path):
    root = tmp_path / "voc"
    save(texture(1, (80, 80)), root / "images" / "a_1.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "a_1.xml").write_text(
        "<annotation><object><name>a</name><bndbox><xmin>40</xmin><ymin>10</ymin>"
        "<xmax>42</xmax><ymax>70</ymax></bndbox></object></annotation>"
    )
    rows, metrics, out = _run(root, tmp_path, layout="voc", data={"label_from": "prefix"},
                              preprocess={"image_size": 16})  # fmt: skip
    (box,) = rows[0]["boxes"]
    (raw,) = manifest.read_rows(tmp_path / "ingested")[0]["boxes"]
    assert box["x1"] - box["x0"] == pytest.approx(1.0)  # 2 source px -> 0.4: one pixel
    assert (box["x0"] + box["x1"]) / 2 == pytest.approx((raw["x0"] + raw["x1"]) / 2 * 0.2)
    assert (box["y0"], box["y1"]) == pytest.approx((raw["y0"] * 0.2, raw["y1"] * 0.2))
    assert metrics["n_boxes_grown"] == 1


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_a_one_to_three_image_under_each_resize_mode(tmp_path: Path, mode: str):
    root = tmp_path / "wide"
    save(texture(1, (90, 30)), root / "images" / "crack_1.png")
    save(line_mask((30, 90), 2, "horizontal"), root / "masks" / "crack_1.png")  # x 9-81
    spot = np.zeros((30, 90), np.uint8)
    spot[10:20, 5:15] = 255  # a defect in the left third only
    save(texture(2, (90, 30)), root / "images" / "crack_2.png")
    save(spot, root / "masks" / "crack_2.png")
    rows, metrics, out = _run(root, tmp_path, layout="image_mask",
                              data={"label_from": "prefix", "masks_required": True},
                              preprocess={"image_size": 30, "resize": mode})  # fmt: skip
    report = json.loads((out / artifacts.PREPROCESS_REPORT_JSON).read_text())
    tiles = Counter(r["raw_id"] for r in rows)
    if mode == "crop":  # three 30 x 30 tiles each; the spot's two empty ones are dropped
        assert sorted(tiles.values()) == [1, 3] and metrics["n_dropped_tiles"] == 2
        assert len({(r["raw_id"], r["split"]) for r in rows}) == 2  # a tile keeps its split
    else:
        assert sorted(tiles.values()) == [1, 1]
    assert report["aspect_changed"]["count"] == (2 if mode == "squash" else 0)
    for row in rows:
        mask, _ = decode_image((out / row["mask_path"]).read_bytes())
        assert mask.shape == (30, 30) and mask.any()
        if mode == "pad":  # the image's own pixels: the middle third; black above and below
            box = row["content_box"]
            assert (box["x0"], box["y0"], box["x1"], box["y1"]) == pytest.approx((0, 10, 30, 20))
            image, _ = decode_image((out / row["path"]).read_bytes())
            assert not image[:7].any() and not image[23:].any()  # (Lanczos reaches 3 px)
            assert not mask[:10].any() and not mask[20:].any()
        else:
            assert row["content_box"] is None
