"""What each `preprocess.resize` mode does to the labels of non-square images: the
measurement behind its default (issue 57).

    python -m experiments.resize_modes [--sizes 64 128] [--write]

No shared dataset is non-square (ELPV 300 x 300, NEU-DET and SD-Saliency-900 200 x 200:
there every mode gives the same output), so the held-out non-square set is made from
SD-Saliency-900: each class's images side by side in pairs (1:2, 200 x 400), the masks
with them, so every defect keeps its real shape and the label its truth. Each image goes
through the preprocess stage's own `process_image` under each mode; per mode and output
size the table gives:

- outputs per input and tiles dropped (crop: a tile of a defect image without defect
  pixels is dropped when the image has a mask; without a mask it would stay, labelled
  defect: "tiles without the defect" is that share among defect images' tiles);
- shape change: per defect image the ratio of its mask's spread down vs across (second
  moments) after over before, median |log2| (0: the shape kept; 1: stretched 2x);
- defect scale: linear size of the defect after / before (sqrt of the pixel areas);
- regions per mask, median before and after, and masks the resize would empty.

Writes experiments/results/resize-modes.md with --write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from defectgen.config import PreprocessConfig
from defectgen.stages.preprocess import process_image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sd-saliency-900"
OUT = REPO / "experiments" / "results" / "resize-modes.md"
MODES = ("squash", "pad", "crop")


def pairs(root: Path = DATA) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class, 200 x 400 image, its mask): each class's images side by side in pairs."""
    out = []
    for label in ("In", "Pa", "Sc"):
        stems = sorted(p.stem for p in (root / "images").glob(f"{label}_*.bmp"))
        for a, b in zip(stems[0::2], stems[1::2], strict=False):
            image = np.hstack([_gray(root / "images" / f"{s}.bmp") for s in (a, b)])
            mask = np.hstack([_gray(root / "masks" / f"{s}.png") for s in (a, b)])
            out.append((label, image, mask))
    return out


def cutouts(root: Path = DATA) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class, 200 x 100 image, its mask): the half-width window of each image centred
    on its defect (clipped to the image): a 2:1 defect image whose defect need not reach
    both of its square tiles."""
    out = []
    for label in ("In", "Pa", "Sc"):
        for path in sorted((root / "images").glob(f"{label}_*.bmp")):
            image, mask = _gray(path), _gray(root / "masks" / f"{path.stem}.png")
            xs = np.nonzero(mask > 127)[1]
            if not len(xs):
                continue
            x0 = int(np.clip(round(xs.mean()) - 50, 0, image.shape[1] - 100))
            out.append((label, image[:, x0 : x0 + 100], mask[:, x0 : x0 + 100]))
    return out


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def _spread(mask: np.ndarray) -> float | None:
    """Down-over-across spread of a mask's foreground (second moments), None if empty."""
    ys, xs = np.nonzero(mask > 127)
    if len(ys) < 2 or xs.std() == 0 or ys.std() == 0:
        return None
    return float(ys.std() / xs.std())


def measure(mode: str, size: int, data: list) -> dict[str, float]:
    cfg = PreprocessConfig(image_size=size, resize=mode)
    outputs = dropped = lost = 0
    shape, scale, before, after = [], [], [], []
    tiles_without, tiles_of_defect = 0, 0
    for _, image, mask in data:
        kept, n_dropped, notes = process_image(image, mask, None, cfg)
        # without the mask, crop would keep the dropped tiles too, each labelled defect
        tiles_of_defect += len(kept) + n_dropped
        tiles_without += n_dropped
        outputs += len(kept)
        dropped += n_dropped
        for note in notes:
            lost += note.get("mask_lost", False)
            before.append(note["mask_before"][0])
            after.append(note["mask_after"][0])
        # the shape and scale of the whole defect pattern, view by view
        for (_, small, _), view_mask in zip(kept, _view_masks(image, mask, cfg), strict=True):
            a, b = _spread(view_mask), _spread(small)
            if a and b:
                shape.append(abs(np.log2(b / a)))
            area_before = (view_mask > 127).sum()
            if area_before:
                scale.append(float(np.sqrt((small > 127).sum() / area_before)))
    return {
        "outputs_per_input": outputs / len(data),
        "tiles_dropped": dropped,
        "tiles_without_defect": tiles_without / max(1, tiles_of_defect),
        "shape_change_log2": float(np.median(shape)),
        "defect_scale": float(np.median(scale)),
        "regions_before": float(np.median(before)),
        "regions_after": float(np.median(after)),
        "emptied": lost,
    }


def _view_masks(image: np.ndarray, mask: np.ndarray, cfg: PreprocessConfig) -> list:
    """Each kept output's mask before the resize (its view: the whole image or a tile)."""
    from defectgen.core import roi as roi_core
    from defectgen.stages.preprocess import _views

    views = [roi_core.crop(mask, v) for v in _views(image, cfg)]
    return [m for m in views if m.any()] if len(views) > 1 else views


def table(sizes: list[int], data: list) -> str:
    lines = [
        "| size | mode | outputs per input | tiles dropped | tiles of defect images "
        "without the defect | shape change (median abs log2) | defect scale | regions "
        "before -> after (median) | masks emptied |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for size in sizes:
        for mode in MODES:
            m = measure(mode, size, data)
            lines.append(
                f"| {size} | {mode} | {m['outputs_per_input']:.2f} | {m['tiles_dropped']} | "
                f"{m['tiles_without_defect']:.0%} | {m['shape_change_log2']:.2f} | "
                f"{m['defect_scale']:.3f} | {m['regions_before']:g} -> "
                f"{m['regions_after']:g} | {m['emptied']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(REPO)}")
    args = ap.parse_args(argv)
    parts = []
    for name, data in (("side by side (1:2, 200 x 400)", pairs()),
                       ("cut out around the defect (2:1, 200 x 100)", cutouts())):  # fmt: skip
        parts.append(f"### {len(data)} SD-Saliency-900 images {name}\n\n{table(args.sizes, data)}")
        print(parts[-1], end="\n\n", flush=True)
    if args.write:
        OUT.write_text(HEAD + "\n\n".join(parts) + "\n", encoding="utf-8")
    return 0


HEAD = """# What each resize mode does to non-square images' labels

`python -m experiments.resize_modes --write` (its docstring says what each column is).
The shared datasets are square, where the three modes give the same output; these are
non-square images made from SD-Saliency-900 with their real masks.

Reading: `squash` stretches every defect 2x at these aspects (shape change 1.0 in log2:
a crack's width against its length is not what the annotation drew); `pad` and `crop`
keep shapes (0.01-0.02, rounding). `crop` keeps the most pixels per defect (scale 0.65
at 64 px against 0.46 squashed and 0.32 padded, on the cut-outs) but 5 % of a defect
image's tiles hold none of its defect: with a mask or boxes they are dropped, without
(a classification-only dataset) each would stay labelled defect. No mode empties a mask
or changes the median regions per mask. So the default is `pad`: the one mode that
changes what no label says, on every kind of dataset, at the cost of resolution (a
padded defect is 0.70x the squashed one's linear size at 1:2); `crop` suits data with
masks or boxes where the defect is small against the image; `squash` remains for a
dataset whose aspect varies little (the report counts images squashed beyond 1.25x).

"""


if __name__ == "__main__":
    raise SystemExit(main())
