"""Ingest: raw dataset -> manifest + a copy of every usable image (and mask).

Reads the raw dataset (never writes to it), checks every file, and writes under
`out_dir`:
    manifest.parquet          one row per unique image (split is still null)
    images/<class>/<id16>.*   the image bytes (converted to PNG when the source
                              was 16-bit, palette, CMYK or had alpha)
    masks/<class>/<id16>.png  {0, 255} masks, when the dataset has them
    ingest_report.json        every skipped file with its reason, duplicates,
                              conversions, per-class counts
A bad file is skipped and reported; the stage fails only when a class ends up
below ingest.min_images_per_class, or (by default) when one image carries two
classes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from defectgen import manifest
from defectgen.artifacts import INGEST_JSON
from defectgen.atomic import atomic_dir, atomic_write_json, link_or_copy, write_file
from defectgen.config import Params
from defectgen.core.images import (
    ImageProblem,
    decode_image,
    encode_png,
    normalize_mask,
    pixel_id,
)
from defectgen.core.roi import scale_boxes
from defectgen.errors import DataError
from defectgen.layouts import Candidate, Discovery, discover


def _load_mask(cand: Candidate, shape: tuple[int, int], params: Params) -> np.ndarray:
    """The candidate's mask as (H, W) {0, 255}; raises ImageProblem naming the problem."""
    if isinstance(cand.mask, Path):
        try:
            data = cand.mask.read_bytes()
        except OSError as exc:
            raise ImageProblem(f"mask {cand.mask.name} unreadable ({exc})") from None
        try:
            pixels, _ = decode_image(data)
        except ImageProblem as exc:
            raise ImageProblem(f"mask {cand.mask.name}: {exc}") from None
    else:
        pixels = cand.mask()  # drawn from annotations in their declared frame
        if pixels.shape[:2] != shape:
            pixels = np.asarray(
                Image.fromarray(pixels).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
            )
    if pixels.shape[:2] != shape:
        raise ImageProblem(
            f"mask is {pixels.shape[1]}x{pixels.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]}; masks must have the image's size"
        )
    return normalize_mask(
        pixels, binarize=params.ingest.binarize_masks, threshold=params.ingest.mask_threshold
    )


def _clean_boxes(
    boxes: list[dict] | None, width: int, height: int, rel: str, warnings: list[str]
) -> list[dict] | None:
    """Clip boxes to the image; drop (and report) empty ones."""
    if boxes is None:
        return None
    out = []
    for b in boxes:
        x0, y0 = max(0.0, b["x0"]), max(0.0, b["y0"])
        x1, y1 = min(float(width), b["x1"]), min(float(height), b["y1"])
        if x1 <= x0 or y1 <= y0:
            warnings.append(f"{rel}: box {b} is empty after clipping to the image; dropped")
            continue
        out.append({"label": b["label"], "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return out


def run(params: Params, *, out_dir: Path, source: Path | None = None) -> dict[str, float]:
    """Ingest the dataset described by params.data into `out_dir`.

    Args:
        params: validated parameters (sections data and ingest are used).
        out_dir: the stage output directory; replaced atomically.
        source: the raw dataset folder; overrides params.data.root when given.

    Returns:
        Metrics: image, class, skip, duplicate and conversion counts, and count/<class>.

    Raises:
        DataError: the dataset cannot be used (missing folders, classes below the
            minimum, one image in two classes).
    """
    cfg = params.data
    root = Path(source) if source is not None else cfg.root
    found: Discovery = discover(cfg, root)

    by_id: dict[str, dict] = {}  # pixel id -> manifest row, in discovery order
    mask_ids: dict[str, str] = {}  # image id -> id of its stored mask
    duplicates: list[dict] = []
    conflicts: list[dict] = []  # one image found under two classes
    conversions: list[dict] = []
    rescaled: list[dict] = []  # annotations whose declared image size differs from the file
    warnings = list(found.warnings)

    with atomic_dir(out_dir) as tmp:
        for cand in tqdm(found.candidates, desc="ingest", unit="img", disable=None):
            try:
                data = cand.path.read_bytes()
            except OSError as exc:
                found.skip(cand.rel, f"cannot read file ({exc.strerror or exc})")
                continue
            try:
                pixels, conversion = decode_image(data, sixteen_bit=params.ingest.sixteen_bit)
            except ImageProblem as exc:
                found.skip(cand.rel, str(exc))
                continue
            height, width = pixels.shape[:2]
            mask = None
            if cand.mask is not None:
                try:
                    mask = _load_mask(cand, (height, width), params)
                except ImageProblem as exc:
                    if cfg.masks_required:
                        found.skip(cand.rel, str(exc))
                        continue
                    warnings.append(f"{cand.rel}: {exc}; kept the image without its mask")
            boxes = cand.boxes
            if cand.declared_size and cand.declared_size != (width, height):
                # The annotation was made on another size of this image (NEU-DET's copy here:
                # 416x416 images, boxes in the 200x200 frame): move boxes into the real frame.
                dw, dh = cand.declared_size
                if boxes:
                    boxes = scale_boxes(boxes, width / dw, height / dh)
                rescaled.append(
                    {"path": cand.rel, "declared": f"{dw}x{dh}", "actual": f"{width}x{height}"}
                )
            boxes = _clean_boxes(boxes, width, height, cand.rel, warnings)

            rid = pixel_id(pixels)
            first = by_id.get(rid)
            if first is not None:
                if first["label"] == cand.label:
                    dup = {"path": cand.rel, "duplicate_of": first["original_path"]}
                    if mask is not None and mask_ids.get(rid) != pixel_id(mask):
                        # Same pixels, other annotation: worth a person's look.
                        dup["mask_differs"] = True
                    duplicates.append(dup)
                else:
                    conflicts.append(
                        {
                            "id": rid,
                            "a": first["original_path"],
                            "la": first["label"],
                            "b": cand.rel,
                            "lb": cand.label,
                        }
                    )
                continue

            short = rid[:16]
            if conversion is None:
                ext = cand.path.suffix.lower()
                rel_img = f"images/{cand.label}/{short}{ext}"
                link_or_copy(cand.path, tmp / rel_img, prefer_link=params.ingest.link == "hardlink")
            else:
                rel_img = f"images/{cand.label}/{short}.png"
                write_file(tmp / rel_img, encode_png(pixels))
                conversions.append({"path": cand.rel, "conversion": conversion})
            rel_mask = None
            if mask is not None:
                rel_mask = f"masks/{cand.label}/{short}.png"
                write_file(tmp / rel_mask, encode_png(mask))
                mask_ids[rid] = pixel_id(mask)
            row = manifest.make_row(
                id=rid,
                path=rel_img,
                label=cand.label,
                width=width,
                height=height,
                channels=1 if pixels.ndim == 2 else 3,
                mask_path=rel_mask,
                boxes=boxes,
                source="",  # filled in below, once the content version is known
                original_path=cand.rel,
            )
            by_id[rid] = row

        rows = list(by_id.values())
        if conflicts and params.ingest.on_label_conflict == "error":
            shown = "\n".join(
                f"  - {c['a']} (class '{c['la']}') and {c['b']} (class '{c['lb']}') "
                "have identical pixels"
                for c in conflicts[:20]
            )
            more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
            raise DataError(
                f"{len(conflicts)} image(s) appear in two classes:\n{shown}{more}\n"
                "Remove the wrong copy, or set ingest.on_label_conflict: skip to drop both."
            )
        if conflicts:  # on_label_conflict: skip drops every copy of a conflicting image
            bad = {c["id"] for c in conflicts}
            for r in rows:
                if r["id"] in bad:
                    for rel in (r["path"], r["mask_path"]):
                        if rel:
                            (tmp / rel).unlink()
            rows = [r for r in rows if r["id"] not in bad]
            for c in conflicts:
                found.skip(c["a"], f"identical to {c['b']} (class '{c['lb']}'); dropped both")
                found.skip(c["b"], f"identical to {c['a']} (class '{c['la']}'); dropped both")

        counts = Counter(r["label"] for r in rows)
        expected = set(counts) | set(cfg.classes or [])
        too_few = {
            c: counts.get(c, 0)
            for c in sorted(expected)
            if counts.get(c, 0) < params.ingest.min_images_per_class
        }
        if too_few or not rows:
            reasons = Counter(s["reason"].split(";")[0] for s in found.skipped)
            top = "\n".join(f"  - {n} x {r}" for r, n in reasons.most_common(5))
            detail = ", ".join(f"'{c}': {n}" for c, n in too_few.items()) or "no images at all"
            raise DataError(
                f"ingest of {root}: classes below ingest.min_images_per_class = "
                f"{params.ingest.min_images_per_class}: {detail}.\n"
                f"{len(found.skipped)} file(s) were skipped"
                + (f"; most common reasons:\n{top}\n" if top else ".\n")
                + "Add images to those classes, fix the skipped files, or lower "
                "ingest.min_images_per_class."
            )

        version = (
            found.version
            or hashlib.sha256("\n".join(sorted(r["id"] for r in rows)).encode()).hexdigest()[:10]
        )
        source_tag = f"{cfg.name}@{version}"
        rows.sort(key=lambda r: (r["label"], r["original_path"]))
        for r in rows:
            r["source"] = source_tag
        manifest.write_manifest(rows, tmp / manifest.MANIFEST_NAME)
        report = {
            "source": source_tag,
            "layout": cfg.layout,
            "root": str(root) if root is not None else "(elpv-dataset package)",
            "counts": dict(sorted(counts.items())),
            "n_images": len(rows),
            "skipped": found.skipped,
            "duplicates": duplicates,
            "conversions": conversions,
            "rescaled_annotations": rescaled,
            "empty_classes": found.empty_classes,
            "warnings": warnings,
        }
        atomic_write_json(tmp / INGEST_JSON, report)

    metrics: dict[str, float] = {
        "n_images": len(rows),
        "n_classes": len(counts),
        "n_skipped": len(found.skipped),
        "n_duplicates": len(duplicates),
        "n_label_conflicts": len(conflicts),
        "n_converted": len(conversions),
        "n_rescaled_annotations": len(rescaled),
        "n_warnings": len(warnings),
    }
    metrics.update({f"count/{c}": n for c, n in sorted(counts.items())})
    return metrics
