"""Export the expanded dataset of a finished run, for training elsewhere.

    defectgen export --format imagefolder|coco|yolo|yolo-seg --condition <condition> --out DIR

What goes in: the real val and test splits as they are, and the training set of one
condition (the names the train and segment stages use):

    real            the few-shot subset: the real images the generator learned from
    all-train       the whole real train split
    real+synthetic  the subset + the gate-passed synthetic images
    real+ungated    the subset + every generated synthetic image

Synthetic images come from the image branch (generate / gate) and the mask branch (pairs
/ pairs_gate), whichever the run has (`--branch` picks one). They are train-only: one
anywhere else is refused, and the test split is written from the real manifest alone.

Formats:
    imagefolder  <split>/<class>/<file>: torchvision.datasets.ImageFolder
    coco         images/<split>/<file> and annotations/instances_<split>.json (pycocotools;
                 instances from the masks' 8-connected regions, RLE, or from the boxes)
    yolo         images/<split>/<file>, labels/<split>/<stem>.txt ("class cx cy w h",
                 normalised) and data.yaml (Ultralytics)
    yolo-seg     the same with one polygon per instance ("class x1 y1 x2 y2 ...")

Annotations of a synthetic image (detection and segmentation formats): its own mask for
a pair; for image-oriented generation (img2img), the parent's mask or boxes when the
generation strength is at most --parent-boxes-up-to (the layout survives low strength),
else none, and then the image is left out of these formats (counted). Real images
without any mask or boxes are left out of them too; all-zero masks are images without
defect (background) and stay. Every written image is a row of provenance.csv: file,
split, class, origin, id, parent, generator, generation params, and where its
annotations came from. The run's folders are only read.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from defectgen import manifest
from defectgen.annotations import Item, annotate, rows_of
from defectgen.atomic import atomic_dir, write_file
from defectgen.core import arms, coco
from defectgen.errors import DataError

FORMATS = ("imagefolder", "coco", "yolo", "yolo-seg")
CONDITIONS = (arms.REAL, arms.ALL_TRAIN, *arms.ADDITIVE)
BRANCHES = ("both", "images", "pairs")
SPLITS = ("train", "val", "test")
PROVENANCE_NAME = "provenance.csv"
PROVENANCE_COLUMNS = (
    "file",
    "split",
    "label",
    "origin",
    "id",
    "parent_id",
    "generator",
    "gen_params",
    "source",
    "annotations",
)


@dataclass
class Run:
    """The stage folders of a finished run (dvc.yaml's data/<...> by default)."""

    preprocessed: Path
    generated: Path | None = None
    gated: Path | None = None
    pairs: Path | None = None
    pairs_gated: Path | None = None


def select(run: Run, condition: str, branch: str) -> dict[str, list[Item]]:
    """The images of each split for `condition` (train) and the real val/test splits."""
    if condition not in CONDITIONS:
        raise DataError(f"--condition {condition!r}: one of {', '.join(CONDITIONS)}")
    if branch not in BRANCHES:
        raise DataError(f"--branch {branch!r}: one of {', '.join(BRANCHES)}")
    real = [r for r in rows_of(run.preprocessed) if r["origin"] == "real"]
    if not real:
        raise DataError(
            f"{run.preprocessed}: no preprocessed manifest; point --preprocessed at the "
            "preprocess stage's output of a finished run"
        )
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for r in real:
        if r["split"] in ("val", "test") or (
            r["split"] == "train" and (r["in_subset"] or condition == arms.ALL_TRAIN)
        ):
            out[r["split"]].append(Item(r, run.preprocessed))
    if condition in arms.ADDITIVE:
        gated = condition == arms.GATED
        sources = []
        if branch in ("both", "images"):
            sources.append((run.gated if gated else run.generated, run.generated))
        if branch in ("both", "pairs"):
            sources.append((run.pairs_gated if gated else run.pairs, run.pairs))
        listings = [s for s in sources if s[0] and (s[0] / manifest.MANIFEST_NAME).is_file()]
        if not listings:
            raise DataError(
                f"{condition}: no synthetic manifest found for the {branch} branch (looked in "
                f"{', '.join(str(s[0]) for s in sources)}); pass --generated/--gated or "
                "--pairs/--pairs-gated"
            )
        for listing, folder in listings:
            for r in rows_of(listing):
                if r["split"] != "train" or r["origin"] != "synthetic":
                    raise DataError(
                        f"{listing}: synthetic row {r['id'][:16]} has split {r['split']!r}; "
                        "synthetic images belong to train only (a damaged manifest?)"
                    )
                out["train"].append(Item(r, folder))
    return out


def _file_name(item: Item) -> str:
    suffix = Path(item.row["path"]).suffix or ".png"
    prefix = "syn" if item.row["origin"] == "synthetic" else "real"
    return f"{prefix}-{item.row['id'][:16]}{suffix}"


def _polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One outer polygon (N, 2) of (x, y) pixel coordinates per 8-connected region."""
    import contourpy

    out = []
    for region in coco.instances(mask):
        padded = np.pad(region.astype(float), 1)
        lines = contourpy.contour_generator(z=padded).lines(0.5)
        longest = max(lines, key=len) - 1.0  # undo the padding's offset
        out.append(longest + 0.5)  # pixel centres -> the pixel grid's extents
    return out


def _yolo_lines(item: Item, cls: int, width: int, height: int, seg: bool) -> list[str]:
    sample = coco.Sample("", "", "", "", item.mask, boxes=item.boxes, size=(height, width))
    if not seg:
        return [
            f"{cls} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
            f"{w / width:.6f} {h / height:.6f}"
            for x, y, w, h in coco.boxes_xywh(sample)
        ]
    lines = []
    for poly in _polygons(item.mask):
        xy = np.clip(poly / [width, height], 0.0, 1.0)
        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy.ravel()))
    return lines


def export(
    run: Run,
    *,
    fmt: str,
    condition: str,
    out: Path,
    branch: str = "both",
    parent_boxes_up_to: float = 0.5,
) -> dict:
    """Write the export to `out` (replaced whole, atomically). Returns its summary."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    splits = select(run, condition, branch)
    labels = sorted({i.row["label"] for items in splits.values() for i in items})
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise DataError(
            f"{out}: exists and is not an earlier export (no export.json); the export "
            "replaces its folder whole, so give a new or empty one"
        )
    # parents of synthetic images are train images, in the subset or not
    real_by_id = {
        r["id"]: Item(r, run.preprocessed)
        for r in rows_of(run.preprocessed)
        if r["split"] == "train"
    }
    left_out: dict[str, int] = {}
    localised = fmt != "imagefolder"
    for split, items in splits.items():
        kept = []
        for item in items:
            annotate(item, real_by_id, parent_boxes_up_to)
            if localised and item.mask is None and item.boxes is None:
                left_out[item.annotations] = left_out.get(item.annotations, 0) + 1
                continue
            if fmt == "yolo-seg" and item.mask is None:
                left_out["boxes only (yolo-seg needs masks)"] = (
                    left_out.get("boxes only (yolo-seg needs masks)", 0) + 1
                )
                continue
            kept.append(item)
        splits[split] = kept
    if localised and not any(i.row["origin"] == "real" for i in splits["train"]):
        raise DataError(
            f"--format {fmt}: the run's real train images have no "
            f"{'masks' if fmt == 'yolo-seg' else 'masks or boxes'} to export; "
            "use --format imagefolder for a classification dataset"
        )
    provenance: list[dict] = []
    with atomic_dir(out) as tmp:
        for split, items in splits.items():
            for item in items:
                name = _file_name(item)
                rel = (
                    f"{split}/{item.row['label']}/{name}"
                    if fmt == "imagefolder"
                    else (f"images/{split}/{name}")
                )
                shutil.copyfile(item.folder / item.row["path"], _parent(tmp / rel))
                provenance.append(
                    {
                        "file": rel,
                        "split": split,
                        "label": item.row["label"],
                        "origin": item.row["origin"],
                        "id": item.row["id"],
                        "parent_id": item.row["parent_id"] or "",
                        "generator": item.row["generator"] or "",
                        "gen_params": item.row["gen_params"] or "",
                        "source": item.row["source"],
                        "annotations": item.annotations if localised else "label",
                    }
                )
                item.row = {**item.row, "_file": rel}
        if fmt == "coco":
            _write_coco(tmp, splits, labels)
        elif fmt in ("yolo", "yolo-seg"):
            _write_yolo(tmp, out, splits, labels, seg=fmt == "yolo-seg")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PROVENANCE_COLUMNS)
        writer.writeheader()
        writer.writerows(provenance)
        write_file(tmp / PROVENANCE_NAME, buf.getvalue().encode())
        summary = {
            "format": fmt,
            "condition": condition,
            "branch": branch,
            "classes": labels,
            "images": {s: len(v) for s, v in splits.items()},
            "synthetic": sum(i.row["origin"] == "synthetic" for i in splits["train"]),
            "left_out": left_out,
            "parent_boxes_up_to": parent_boxes_up_to,
        }
        write_file(tmp / "export.json", json.dumps(summary, indent=2).encode())
    return summary


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_coco(tmp: Path, splits: dict[str, list[Item]], labels: list[str]) -> None:
    for split, items in splits.items():
        samples = [
            coco.Sample(
                file_name=i.row["_file"].removeprefix("images/"),
                label=i.row["label"],
                split=split,
                origin=i.row["origin"],
                mask=i.mask,
                defectgen_id=i.row["id"],
                parent_id=i.row["parent_id"],
                extra={"annotations_from": i.annotations},
                boxes=i.boxes,
                size=(i.row["height"], i.row["width"]),
            )
            for i in items
        ]
        data = coco.build(samples, labels, split)
        write_file(tmp / "annotations" / f"instances_{split}.json", json.dumps(data).encode())


def _write_yolo(
    tmp: Path, out: Path, splits: dict[str, list[Item]], labels: list[str], seg: bool
) -> None:
    for split, items in splits.items():
        (tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in items:
            lines = _yolo_lines(
                i, labels.index(i.row["label"]), i.row["width"], i.row["height"], seg
            )
            stem = Path(i.row["_file"]).stem
            text = "".join(f"{line}\n" for line in lines)
            write_file(tmp / "labels" / split / f"{stem}.txt", text.encode())
    data = {
        "path": str(out.resolve()),
        **{s: f"images/{s}" for s in SPLITS},
        "nc": len(labels),
        "names": dict(enumerate(labels)),
    }
    write_file(tmp / "data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
