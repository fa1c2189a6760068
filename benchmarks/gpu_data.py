"""NEU-DET as the GPU run reads it: class folders of JPEGs (quality 90; the source is JPEG
too), resized, small enough to travel to a GPU machine beside the wheels.

The raw copy in ../shared/data/neu-det is read, never written. Labels come from the
file names (`<class>_<n>.jpg`); the VOC boxes stay behind (no stage uses them yet).
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

NAME = re.compile(r"^(?P<label>.+)_\d+$")


def prepare_neu(
    source: Path,
    dest: Path,
    *,
    size: int,
    classes: list[str] | None = None,
    per_class: int | None = None,
) -> int:
    """Write `dest/<class>/<stem>.jpg` at `size` x `size` (grayscale, Lanczos); returns the
    image count. Files already there are kept (a rerun only adds what is missing)."""
    images = sorted((Path(source) / "images").glob("*.jpg")) or sorted(Path(source).glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"{source}: no NEU-DET images (<class>_<n>.jpg) found")
    counts: dict[str, int] = {}
    for path in images:
        match = NAME.match(path.stem)
        if match is None:
            continue
        label = match["label"]
        if classes is not None and label not in classes:
            continue
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        out = Path(dest) / label / f"{path.stem}.jpg"
        if out.is_file():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            small = img.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        tmp = out.with_suffix(".tmp")
        small.save(tmp, format="JPEG", quality=90)
        tmp.replace(out)
    return sum(counts.values())
