"""The cluster's per-class fan-out: which classes to fan out over, each class's gate
verdict, and the fan-in that merges per-class stage outputs into the folder one run over
every class would have written.

On a cluster, finetune, sweep, generate and gate run once per class (KFP ParallelFor,
`runner.run_task(only_class=...)`); train and report read whole-dataset folders,
so the per-class outputs are merged. Every per-class stage output is
keyed by class (images/<class>/, adapters/<class>/, curves/<class>.*.csv, JSON objects
with one key per class or a "classes" object, manifest rows with a label), so merging is
generic:

    *.json      objects merged key by key; equal values are kept once, a conflict is
                an error (two parts disagreeing on the extractor, say)
    *.parquet   rows concatenated in part order (parts are sorted by class)
    *.csv       rows concatenated under the one shared header
    *.png       at the same path in several parts (a samples grid): stacked vertically
    other       copied; the same path in two parts must hold the same bytes
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from defectgen import manifest
from defectgen.artifacts import GATE_JSON, read_gate
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.errors import DataError


def classes(params: Params, preprocessed: Path) -> list[str]:
    """The classes finetune adapts: finetune.classes, else every class with real train
    images (a listed class without any fails in its own finetune task, by name), never
    a defect-free one (data.normal_classes)."""
    if params.finetune.classes:
        return list(params.finetune.classes)
    rows = manifest.read_rows(Path(preprocessed))
    labels = sorted({r["label"] for r in rows if r["split"] == "train" and r["origin"] == "real"})
    return params.synthesised(labels)


def verdict(gated: Path, label: str) -> str:
    """ "pass" or "fail": the gate stage's verdict on `label` in its output `gated`."""
    entry = read_gate(Path(gated))["classes"].get(label)
    if entry is None:
        raise DataError(
            f"{Path(gated) / GATE_JSON}: no verdict for class {label!r}; gate that class first"
        )
    return "pass" if entry["passed"] else "fail"


def merge_json(a: object, b: object, where: str) -> object:
    """`b` merged into `a`: objects key by key, anything else must be equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = merge_json(a[key], value, f"{where}.{key}") if key in a else value
        return out
    if a != b:
        raise DataError(f"{where}: the per-class outputs disagree ({a!r} vs {b!r})")
    return a


def _stack_png(blobs: list[bytes]) -> bytes:
    images = [np.asarray(Image.open(io.BytesIO(b))) for b in blobs]
    if len({im.ndim for im in images}) != 1:
        raise DataError("cannot stack grayscale and colour grids")
    width = max(im.shape[1] for im in images)
    pad = [[(0, 0), (0, width - im.shape[1])] + [(0, 0)] * (im.ndim - 2) for im in images]
    stacked = np.concatenate([np.pad(im, p) for im, p in zip(images, pad, strict=True)])
    buf = io.BytesIO()
    Image.fromarray(stacked).save(buf, format="PNG")
    return buf.getvalue()


def _merge_csv(paths: list[Path]) -> bytes:
    header, rows = None, []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            head = next(reader, None)
            if header is not None and head != header:
                raise DataError(f"{path}: header {head} differs from {header}")
            header = head
            rows.extend(reader)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header or [])
    writer.writerows(rows)
    return buf.getvalue().encode()


def merge(parts: list[Path], out_dir: Path) -> dict[str, int]:
    """Merge the folders `parts` into `out_dir` (replaced whole, atomically).

    Returns:
        n_parts, n_files (in the merged folder).
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise DataError("nothing to merge: no per-class outputs (did every class fail?)")
    by_rel: dict[str, list[Path]] = {}
    for part in parts:
        if not part.is_dir():
            raise DataError(f"{part}: not a folder; pass the per-class stage outputs")
        for path in sorted(part.rglob("*")):
            if path.is_file():
                by_rel.setdefault(path.relative_to(part).as_posix(), []).append(path)
    with atomic_dir(out_dir) as tmp:
        for rel, paths in by_rel.items():
            target = tmp / rel
            if rel.endswith(".json"):
                merged: object = {}
                for path in paths:
                    merged = merge_json(merged, json.loads(path.read_text("utf-8")), rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(target, merged)
            elif rel.endswith(".parquet"):
                tables = [pq.read_table(p) for p in paths]
                target.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.concat_tables(tables, promote_options="permissive"), target)
            elif len(paths) == 1:
                write_file(target, paths[0].read_bytes())
            elif rel.endswith(".csv"):
                write_file(target, _merge_csv(paths))
            elif rel.endswith(".png"):
                write_file(target, _stack_png([p.read_bytes() for p in paths]))
            else:
                blobs = {p.read_bytes() for p in paths}
                if len(blobs) != 1:
                    raise DataError(f"{rel}: differs between per-class outputs {paths}")
                write_file(target, blobs.pop())
    return {"n_parts": len(parts), "n_files": len(by_rel)}
