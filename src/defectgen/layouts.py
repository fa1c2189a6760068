"""Reading raw datasets: one function per supported layout, all returning Candidates.

A layout reader only finds files and labels; it never decodes pixels (ingest
does) and never writes. Whatever it cannot use it records in `skipped` with a
reason a person can act on.

Layouts (params `data.layout`):
- folders:    root/<class>/*.png|jpg|bmp|tif  (or any tree, with label_from: prefix)
- image_mask: root/images/... and root/masks/<same relative stem>.png
- voc:        root/images/... and root/annotations/<stem>.xml (Pascal VOC boxes)
- coco:       root/annotations.json (instances; polygons or RLE) and root/images/...
- yolo:       root/data.yaml (Ultralytics: names, train/val/test image folders or
              lists) and labels/<same path>.txt per image: "class cx cy w h" boxes
              and/or "class x1 y1 x2 y2 ..." polygons (YOLO-seg, drawn as the mask);
              an empty or missing label file is a defect-free image
- elpv:       the elpv-dataset package (labels.csv + images/), classes by binning
              the defect probability
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from defectgen.config import IMAGE_EXTENSIONS, DataConfig
from defectgen.errors import DataError

MaskSource = Path | Callable[[], np.ndarray] | None


@dataclass
class Candidate:
    """One raw image that looks usable, before its pixels are checked."""

    path: Path
    rel: str  # path relative to the dataset root, for reports and provenance
    label: str
    mask: MaskSource = None
    boxes: list[dict] | None = None
    declared_size: tuple[int, int] | None = None  # (width, height) an annotation claims


@dataclass
class Discovery:
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {path, reason}
    warnings: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    version: str | None = None  # a packaged dataset's version; None: hash the content

    def skip(self, rel: str, reason: str) -> None:
        self.skipped.append({"path": rel, "reason": reason})


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _walk_images(base: Path, root: Path, found: Discovery) -> list[Path]:
    """Image files under `base`, sorted; other files are recorded as skipped."""
    images = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or _is_hidden(path.relative_to(base)):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            found.skip(
                _rel(path, root),
                f"extension '{path.suffix or '(none)'}' is not an image type "
                f"({', '.join(IMAGE_EXTENSIONS)}); move it out of the dataset folder",
            )
    return images


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class _Labeler:
    """Applies data.label_from (folder / prefix) to a file under a base folder."""

    def __init__(self, cfg: DataConfig, base: Path):
        self.cfg = cfg
        self.base = base
        self.pattern = re.compile(cfg.label_pattern)

    def __call__(self, path: Path) -> tuple[str | None, str | None]:
        """(label, None) or (None, reason)."""
        if self.cfg.label_from == "folder":
            parts = path.relative_to(self.base).parts
            if len(parts) < 2:
                return None, (
                    "not inside a class folder; put it in "
                    f"{self.base.name}/<class>/ or set data.label_from: prefix"
                )
            return parts[0], None
        match = self.pattern.fullmatch(path.stem)
        if not match or not match.group("label"):
            return None, (
                f"file name '{path.stem}' does not match data.label_pattern "
                f"{self.cfg.label_pattern!r}; rename it or change the pattern"
            )
        return match.group("label"), None


def _need_root(root: Path | None, cfg: DataConfig) -> Path:
    if root is None:
        raise DataError(
            f"layout '{cfg.layout}' needs a dataset folder: set data.root or pass --source DIR"
        )
    return root


def _dataset_file(root: Path, name: str, what: str, key: str) -> Path:
    """The layout's index file under the dataset folder, or a DataError naming the key."""
    path = root / name
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found; set data.{key}")
    return path


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found; check data.root and the layout")


def discover(cfg: DataConfig, root: Path | None) -> Discovery:
    """Find every candidate image of the dataset described by `cfg`."""
    readers = {
        "folders": _folders,
        "image_mask": _image_mask,
        "voc": _voc,
        "coco": _coco,
        "yolo": _yolo,
        "elpv": _elpv,
    }
    found = readers[cfg.layout](cfg, root)
    if cfg.classes is not None:
        wanted = set(cfg.classes)
        kept = []
        for c in found.candidates:
            if c.label in wanted:
                kept.append(c)
            else:
                found.skip(c.rel, f"class '{c.label}' is not listed in data.classes")
        found.candidates = kept
    return found


def _folders(cfg: DataConfig, root: Path | None) -> Discovery:
    root = _need_root(root, cfg)
    _require_dir(root, "dataset")
    found = Discovery()
    label_of = _Labeler(cfg, root)
    for path in _walk_images(root, root, found):
        label, reason = label_of(path)
        if label is None:
            found.skip(_rel(path, root), reason)
        else:
            found.candidates.append(Candidate(path, _rel(path, root), label))
    if cfg.label_from == "folder":
        labels = {c.label for c in found.candidates}
        found.empty_classes = sorted(
            d.name
            for d in root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and d.name not in labels
        )
    return found


def _index_by_stem(base: Path) -> dict[str, Path]:
    """Relative path without suffix -> file, for pairing images with masks/annotations."""
    if not base.is_dir():
        return {}
    return {
        p.relative_to(base).with_suffix("").as_posix(): p
        for p in sorted(base.rglob("*"))
        if p.is_file() and not _is_hidden(p.relative_to(base))
    }


def _image_mask(cfg: DataConfig, root: Path | None) -> Discovery:
    root = _need_root(root, cfg)
    images_dir, masks_dir = root / cfg.images_dir, root / cfg.masks_dir
    _require_dir(images_dir, "images")
    _require_dir(masks_dir, "masks")
    found = Discovery()
    masks = _index_by_stem(masks_dir)
    label_of = _Labeler(cfg, images_dir)
    for path in _walk_images(images_dir, root, found):
        rel = _rel(path, root)
        label, reason = label_of(path)
        if label is None:
            found.skip(rel, reason)
            continue
        stem = path.relative_to(images_dir).with_suffix("").as_posix()
        mask = masks.get(stem)
        if mask is None and cfg.masks_required:
            found.skip(
                rel,
                f"no mask: expected {cfg.masks_dir}/{stem}.png (masks are required; "
                "add the mask or set data.masks_required: false)",
            )
            continue
        found.candidates.append(Candidate(path, rel, label, mask=mask))
    return found


def parse_voc(xml_path: Path) -> tuple[list[dict], tuple[int, int] | None]:
    """Boxes ({label, x0, y0, x1, y1}, pixels) and the declared (width, height) of a VOC file.

    Raises:
        ValueError: the file is not a readable VOC annotation.
    """
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"unreadable XML ({exc})") from None
    node = tree.getroot()
    size = None
    w, h = node.findtext("size/width"), node.findtext("size/height")
    if w and h:
        try:
            size = (int(float(w)), int(float(h)))
        except ValueError:
            size = None
    boxes = []
    for obj in node.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise ValueError("an <object> lacks <name> or <bndbox>")
        try:
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"object '{name}' has a non-numeric <bndbox>") from None
        # VOC coordinates are 1-based inclusive; ours are 0-based half-open.
        x0, y0, x1, y1 = coords
        boxes.append({"label": name, "x0": x0 - 1, "y0": y0 - 1, "x1": x1, "y1": y1})
    return boxes, size


def _voc(cfg: DataConfig, root: Path | None) -> Discovery:
    root = _need_root(root, cfg)
    images_dir, ann_dir = root / cfg.images_dir, root / cfg.annotations_dir
    _require_dir(images_dir, "images")
    _require_dir(ann_dir, "annotations")
    found = Discovery()
    anns = {k: v for k, v in _index_by_stem(ann_dir).items() if v.suffix.lower() == ".xml"}
    label_of = _Labeler(cfg, images_dir)
    for path in _walk_images(images_dir, root, found):
        rel = _rel(path, root)
        stem = path.relative_to(images_dir).with_suffix("").as_posix()
        xml_path = anns.get(stem) or anns.get(path.stem)
        boxes, size = None, None
        if xml_path is not None:
            try:
                boxes, size = parse_voc(xml_path)
            except ValueError as exc:
                found.skip(rel, f"annotation {_rel(xml_path, root)}: {exc}; fix or remove it")
                continue
        if cfg.label_from == "annotation":
            if not boxes:
                found.skip(
                    rel,
                    "no annotated objects to take the class from "
                    f"(expected {cfg.annotations_dir}/{stem}.xml with <object> entries)",
                )
                continue
            label = Counter(b["label"] for b in boxes).most_common(1)[0][0]
        else:
            label, reason = label_of(path)
            if label is None:
                found.skip(rel, reason)
                continue
            if xml_path is None:
                found.warnings.append(f"{rel}: no annotation file; kept without boxes")
        found.candidates.append(Candidate(path, rel, label, boxes=boxes, declared_size=size))
    return found


def _coco_mask(segs: list, height: int, width: int) -> Callable[[], np.ndarray]:
    """A deferred union of COCO segmentations (polygons, RLE or uncompressed RLE)."""

    def build() -> np.ndarray:
        from pycocotools import mask as mask_utils

        out = np.zeros((height, width), dtype=np.uint8)
        for seg in segs:
            if isinstance(seg, list):  # polygons
                rles = mask_utils.frPyObjects(seg, height, width)
                rle = mask_utils.merge(rles)
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            out |= mask_utils.decode(rle).astype(np.uint8)
        return out * 255

    return build


def _coco(cfg: DataConfig, root: Path | None) -> Discovery:
    root = _need_root(root, cfg)
    ann_path = _dataset_file(root, cfg.coco_json, "COCO annotation", "coco_json")
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
        cat_names = {c["id"]: c["name"] for c in cats}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{ann_path}: not a COCO instances file ({type(exc).__name__}: {exc}); it needs "
            "'images', 'categories' and 'annotations' lists"
        ) from None
    images_dir = root / cfg.images_dir
    found = Discovery()
    label_of = _Labeler(cfg, images_dir)
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    for entry in sorted(images, key=lambda e: str(e.get("file_name", ""))):
        name = str(entry.get("file_name", ""))
        path = images_dir / name
        rel = _rel(path, root) if path.is_relative_to(root) else name
        if not path.is_file():
            found.skip(rel, f"listed in {cfg.coco_json} but not found under {cfg.images_dir}/")
            continue
        entry_anns = by_image.get(entry.get("id"), [])
        try:
            width, height = int(entry["width"]), int(entry["height"])
            boxes = []
            for a in entry_anns:
                x, y, w, h = (float(v) for v in a["bbox"])
                boxes.append(
                    {
                        "label": cat_names[a["category_id"]],
                        "x0": x,
                        "y0": y,
                        "x1": x + w,
                        "y1": y + h,
                    }
                )
        except (KeyError, TypeError, ValueError) as exc:
            found.skip(rel, f"malformed COCO entry ({type(exc).__name__}: {exc})")
            continue
        if cfg.label_from == "annotation":
            if not boxes:
                found.skip(rel, f"no annotations in {cfg.coco_json} to take the class from")
                continue
            label = Counter(b["label"] for b in boxes).most_common(1)[0][0]
        else:
            label, reason = label_of(path)
            if label is None:
                found.skip(rel, reason)
                continue
        segs = [a["segmentation"] for a in entry_anns if a.get("segmentation")]
        mask = _coco_mask(segs, height, width) if segs else None
        if mask is None and cfg.masks_required:
            found.skip(rel, f"no segmentation in {cfg.coco_json} (masks are required)")
            continue
        found.candidates.append(
            Candidate(
                path, rel, label, mask=mask, boxes=boxes or None, declared_size=(width, height)
            )
        )
    return found


def _polygon_mask(polygons: list[list[float]], height: int, width: int) -> Callable[[], np.ndarray]:
    """A deferred union of polygons in pixel coordinates ([x1, y1, x2, y2, ...] each),
    drawn as COCO draws its polygons (one rasteriser for both layouts)."""
    return _coco_mask([polygons], height, width)


def parse_yolo_label(text: str, n_classes: int) -> list[tuple[int, list[float]]]:
    """The objects of one YOLO label file: (class id, normalised values) per line, 4
    values for a box (cx cy w h), 6 or more (an even count) for a polygon.

    Raises:
        ValueError: naming the line and what is wrong with it.
    """
    objects = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, values = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"line {lineno}: not numbers ({line.strip()!r})") from None
        if not 0 <= cls < n_classes:
            raise ValueError(f"line {lineno}: class {cls} is not in data.yaml's {n_classes} names")
        if len(values) != 4 and (len(values) < 6 or len(values) % 2):
            raise ValueError(
                f"line {lineno}: {len(values)} values; a box has 4 (cx cy w h), a polygon "
                "an even number of at least 6 (x1 y1 x2 y2 x3 y3 ...)"
            )
        if any(not -1e-6 <= v <= 1 + 1e-6 for v in values):
            raise ValueError(f"line {lineno}: coordinates outside 0-1 (YOLO's are normalised)")
        objects.append((cls, values))
    return objects


def _yolo_images(entry, base: Path, what: str) -> list[Path]:
    """The images of one data.yaml split entry: a folder (searched recursively), a .txt
    list of image paths, or a list of either."""
    entries = entry if isinstance(entry, list) else [entry]
    out = []
    for e in entries:
        path = base / str(e)
        if path.is_dir():
            out += [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:  # as Ultralytics reads them: ./ from the list's own folder
                    here = path.parent / line[2:] if line.startswith("./") else base / line
                    out.append(here)  # (an absolute line stays as it is)
        else:
            raise DataError(f"{what}: {e!r} is neither a folder nor a .txt list under {base}")
    return out


def _yolo_label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, suffix .txt."""
    parts = list(image.parts)
    if "images" in parts:
        k = len(parts) - 1 - parts[::-1].index("images")
        parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def _yolo(cfg: DataConfig, root: Path | None) -> Discovery:
    """Ultralytics YOLO / YOLO-seg. The image's class is its most frequent object's; an
    image without objects belongs to the first of data.normal_classes (skipped when
    there is none). The dataset's train/val/test lists are read together: preprocess
    makes this project's own split and few-shot subset (preprocess.split)."""
    root = _need_root(root, cfg)
    spec_path = _dataset_file(root, cfg.yolo_yaml, "YOLO data", "yolo_yaml")
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        names = spec["names"]
        if isinstance(names, dict):  # class id -> name; the ids must be 0..n-1
            by_id = {int(k): str(v) for k, v in names.items()}
            if set(by_id) != set(range(len(by_id))):
                raise ValueError(f"class ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
            names = [by_id[i] for i in range(len(by_id))]
        names = [str(n) for n in names]
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise DataError(
            f"{spec_path}: not an Ultralytics data file ({type(exc).__name__}: {exc}); it "
            "needs 'names' (a list, or a dict of class id -> name) and split folders"
        ) from None
    found = Discovery()
    base = spec_path.parent  # the splits are relative to `path`, itself to the file's folder
    if spec.get("path"):
        given = base / str(spec["path"])  # an absolute path stays as it is
        if given.is_dir():
            base = given
        else:  # a moved dataset: its own folder
            found.warnings.append(
                f"{cfg.yolo_yaml}: path {spec['path']!r} not found; read the splits from {base}"
            )
    seen: set[Path] = set()
    for split in ("train", "val", "test"):
        if not spec.get(split):
            continue
        for path in _yolo_images(spec[split], base, f"{cfg.yolo_yaml} {split}"):
            if path in seen:
                continue
            seen.add(path)
            rel = _rel(path, root) if path.is_relative_to(root) else str(path)
            label_path = _yolo_label_path(path)
            label_rel = (
                label_path.relative_to(root).as_posix()
                if label_path.is_relative_to(root)
                else str(label_path)
            )
            try:
                text = label_path.read_text(encoding="utf-8") if label_path.is_file() else ""
                objects = parse_yolo_label(text, len(names))
            except (ValueError, UnicodeDecodeError) as exc:
                found.skip(rel, f"label file {label_rel}: {exc}; fix or remove the line")
                continue
            if not objects:
                if not cfg.normal_classes:
                    found.skip(
                        rel,
                        f"no objects in {label_rel}: a defect-free image; name its class in "
                        "data.normal_classes (e.g. [good]) to keep such images",
                    )
                    continue
                found.candidates.append(Candidate(path, rel, cfg.normal_classes[0]))
                continue
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (OSError, ValueError) as exc:
                found.skip(rel, f"unreadable image ({exc})")
                continue
            boxes, polygons = [], []
            for cls, v in objects:
                if len(v) == 4:
                    (cx, cy, w, h) = v
                    xs, ys = [cx - w / 2, cx + w / 2], [cy - h / 2, cy + h / 2]
                else:
                    xs, ys = v[0::2], v[1::2]
                    pixels = np.reshape(v, (-1, 2)) * (width, height)
                    polygons.append(pixels.ravel().tolist())
                boxes.append(
                    {
                        "label": names[cls],
                        "x0": min(xs) * width,
                        "y0": min(ys) * height,
                        "x1": max(xs) * width,
                        "y1": max(ys) * height,
                    }
                )
            mask = None
            if polygons and len(polygons) == len(objects):
                mask = _polygon_mask(polygons, height, width)
            elif polygons:
                found.warnings.append(
                    f"{label_rel}: boxes and polygons mixed; kept the boxes, no mask"
                )
            if mask is None and cfg.masks_required:
                found.skip(rel, f"no polygons in {label_rel} (masks are required)")
                continue
            label = Counter(b["label"] for b in boxes).most_common(1)[0][0]
            found.candidates.append(
                Candidate(path, rel, label, mask=mask, boxes=boxes, declared_size=(width, height))
            )
    if not seen:
        raise DataError(f"{spec_path}: no train, val or test images listed")
    _orphan_labels(seen, root, found)
    if any(c.mask is not None for c in found.candidates):  # YOLO-seg: "no defect" is a mask
        for c in found.candidates:
            if c.boxes is None:
                c.mask = _empty_mask(c.path)
    return found


def _orphan_labels(images: set[Path], root: Path, found: Discovery) -> None:
    """Label files without their image, in the label folders of the listed images, each
    reported as skipped: its annotation would otherwise be lost without a word."""
    used = {_yolo_label_path(p) for p in images}
    for folder in sorted({p.parent for p in used if p.parent.is_dir()}):
        for label in sorted(folder.glob("*.txt")):
            if label not in used:
                rel = _rel(label, root) if label.is_relative_to(root) else str(label)
                found.skip(
                    rel,
                    "label file without its image (no image of this name under "
                    "images/): add the image or remove the label file",
                )


def _empty_mask(path: Path) -> Callable[[], np.ndarray]:
    """A deferred all-zero mask of the image's size: a defect-free image's annotation."""

    def build() -> np.ndarray:
        with Image.open(path) as im:
            return np.zeros(im.size[::-1], dtype=np.uint8)

    return build


def elpv_data_dir() -> Path:
    """Where the elpv-dataset package keeps labels.csv and images/."""
    try:
        import elpv_dataset
    except ImportError:
        raise DataError(
            "layout 'elpv' needs the elpv-dataset package: pip install elpv-dataset"
        ) from None
    return Path(elpv_dataset.__file__).parent / "data"


def _elpv(cfg: DataConfig, root: Path | None) -> Discovery:
    """ELPV: labels.csv rows `images/cellNNNN.png  <probability>  <mono|poly>`."""
    if root is None:
        root = elpv_data_dir()
        from elpv_dataset.__about__ import __version__

        version = __version__
    else:
        version = None
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        raise DataError(f"{labels_csv}: ELPV labels.csv not found; data.root must hold it")
    found = Discovery(version=version)
    bins = np.asarray(cfg.elpv_bins)
    for lineno, line in enumerate(labels_csv.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rel, prob = parts[0], float(parts[1])
        except (IndexError, ValueError):
            found.skip(f"labels.csv:{lineno}", f"malformed line {line!r}")
            continue
        label = cfg.elpv_classes[int(np.searchsorted(bins, prob, side="right"))]
        found.candidates.append(Candidate(root / rel, rel, label))
    return found
