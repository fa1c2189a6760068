"""The real images a stage may read, from a preprocessed folder's manifest.

Only train-split images are read by `train_images` (the subset, or all of train, per
params): val and test never reach a model that generates images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defectgen import manifest
from defectgen.core.images import ImageProblem, decode_image, resize
from defectgen.errors import DataError


def load_images(folder: Path, rows: list[dict], size: int | None = None) -> list[np.ndarray]:
    """The pixels of manifest `rows` stored under `folder`, resized to `size` if given."""
    out = []
    for row in rows:
        path = Path(folder) / row["path"]
        try:
            pixels, _ = decode_image(path.read_bytes())
        except (OSError, ImageProblem) as exc:
            raise DataError(
                f"{path}: cannot decode ({exc}); re-run the stage that wrote it"
            ) from None
        out.append(resize(pixels, size) if size and size != pixels.shape[0] else pixels)
    return out


def train_images(
    preprocessed: Path, *, data: str, classes: list[str] | None = None, size: int | None = None
) -> dict[str, list[tuple[dict, np.ndarray]]]:
    """The real images generation may learn from, per class: (manifest row, uint8 pixels).

    Args:
        preprocessed: the preprocess stage's output folder.
        data: "subset" (train rows in the few-shot subset) or "train" (all train rows).
        classes: restrict to these classes (None: all); an unknown name is an error.
        size: resize to this many pixels square (None: as stored).
    """
    preprocessed = Path(preprocessed)
    rows = manifest.read_rows(preprocessed)
    chosen = [
        r
        for r in rows
        if r["split"] == "train" and r["origin"] == "real" and (data == "train" or r["in_subset"])
    ]
    labels = sorted({r["label"] for r in rows})
    if classes is not None:
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise DataError(
                f"{preprocessed}: classes {unknown} from params are not in the dataset; "
                f"its classes are {labels}"
            )
        labels = [c for c in labels if c in classes]
    out: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for label in labels:
        picked = sorted((r for r in chosen if r["label"] == label), key=lambda r: r["id"])
        if not picked:
            raise DataError(
                f"{preprocessed}: class {label!r} has no {data} images to learn from; "
                "raise preprocess.subset or drop the class via finetune.classes"
            )
        images = list(zip(picked, load_images(preprocessed, picked, size), strict=True))
        out[label] = images
    return out
