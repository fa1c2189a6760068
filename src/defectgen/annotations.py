"""Where a training image's defect locations come from: its own mask, its dataset's
boxes, or, for an image-oriented (img2img) synthetic image, its parent's, inherited only
up to a generation strength (the layout survives low strength). Shared by `defectgen
export` and the detect stage; each image says where its annotations came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from defectgen import manifest


@dataclass
class Item:
    """One image: its manifest row and the folder its paths are relative to."""

    row: dict
    folder: Path
    annotations: str = "label"  # where its masks/boxes come from (provenance)
    mask: np.ndarray | None = None
    boxes: list[tuple[float, float, float, float]] | None = None


def rows_of(folder: Path | None) -> list[dict]:
    if folder is None or not (folder / manifest.MANIFEST_NAME).is_file():
        return []
    return manifest.read_rows(folder)


def read_mask(item_folder: Path, rel: str) -> np.ndarray:
    with Image.open(item_folder / rel) as im:  # the pipeline's masks: 8-bit, 0 or 255
        return np.asarray(im.convert("L"))


def boxes_of(row: dict) -> list[tuple[float, float, float, float]] | None:
    if row["boxes"] is None:
        return None
    return [(b["x0"], b["y0"], b["x1"], b["y1"]) for b in row["boxes"]]


def annotate(item: Item, real_by_id: dict[str, Item], max_strength: float) -> Item:
    """Fill the item's mask or boxes and say where they came from."""
    row = item.row
    if row["mask_path"]:
        item.mask = read_mask(item.folder, row["mask_path"])
        item.annotations = "mask"
    elif row["boxes"] is not None:
        item.boxes = boxes_of(row)
        item.annotations = "boxes"
    elif row["origin"] == "synthetic":
        strength = json.loads(row["gen_params"] or "{}").get("strength")
        parent = real_by_id.get(row["parent_id"] or "")
        if parent is None or strength is None:
            item.annotations = "none (no parent layout to inherit)"
        elif strength > max_strength:
            item.annotations = f"none (strength {strength} > {max_strength})"
        else:
            parent = annotate(Item(parent.row, parent.folder), {}, max_strength)
            if parent.mask is None and parent.boxes is None:
                item.annotations = "none (the parent has none)"
            else:
                item.mask, item.boxes = parent.mask, parent.boxes
                item.annotations = f"parent {parent.annotations} (strength {strength})"
    else:
        item.annotations = "none"
    return item
