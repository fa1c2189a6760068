"""Masks: new defect masks per class from its real train masks (the mask branch's first
stage; the mask-conditioned generator reads them).

Methods (params masks.methods), each producing masks.per_class masks per class:
    hmi       DefectSynth's hybrid mask interpolation (III-C): random pairs of
              real masks, masks.hmi_between intermediates per pair, in image space for
              classes of small defects (mean area ratio < masks.tau) and in the mask
              producer's DDIM-inverted latent space for large ones
    perturb   Valvano et al.'s small random shape perturbations of real masks (section
              4.3), kept only within sanity limits (area, nothing pushed off the image)
    ddpm      DefFiller's mask producer (4.4.1): a DDPM trained from scratch on
              the class's real masks at 64 px, sampled, binarised and resized
Only train masks are read (masks.data: the few-shot subset or all of train); val masks
are the held-out reference the quality numbers compare against. Empty outputs are
dropped and counted.

Fit for pairs (masks.accept): a mask is used only within the class's real train masks'
area-ratio and region-count range widened by range_factor (core.masks.MaskRange); a
method is dropped for the class, with the reason in masks.json, when fewer than
min_accepted of its masks are in range or its distance to the val masks is above
max_distance_ratio x the class's best method's. Only used masks are written, so the
pairs stage never sees the others; the grid shows them in grey.

Quality, per class and method: the Frechet distance of the masks to the class's val
masks through the gate's metric code (the same extractor and name as the gate), next
to the train masks' own distance (the real-vs-real baseline), and area /
connected-component statistics next to the real masks'.

A dataset without masks gets masks.json {"skipped": ...} and nothing else: the DAG runs
on (the ELPV demo does).

Writes under `out_dir`:
    masks.json          skipped, or per class: HMI space, real statistics, the range,
                        per method made / accepted / used (n) counts, draws
                        rejected, statistics, distances and the reason it was dropped
    masks.parquet       one row per mask: id, label, method, path, parents, alpha, seed,
                        area_ratio, components
    masks/<class>/*.png the masks (uint8 {0, 255}, the preprocessed image size)
    grids/<class>.png   real masks (top row), then one row per method (unused in grey)
    curves/<class>.ddpm.csv   the mask producer's training loss
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from defectgen import manifest
from defectgen.artifacts import CURVES_DIR, MASKS_JSON, MASKS_PARQUET
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import masks as masks_core
from defectgen.core.images import decode_image, encode_png
from defectgen.curves import Curves
from defectgen.progress import progress
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

# DDPM work (steps x pixels) a CPU does in minutes: 4x the CPU profile's 300 steps at 32 px
CPU_SIZED = 4 * 300 * 32**2
NORMAL = "a defect-free class (data.normal_classes): no masks of its own"
GRID_COLUMNS = 8
UNUSED_GREY = 96  # grid: a mask out of range, or of a dropped method
NO_MASKS = (
    "no masks: the dataset has no pixel masks (layouts image_mask, or coco with "
    "segmentations, carry them); the mask branch needs them"
)


def _read(preprocessed: Path, rows: list[dict]) -> list[np.ndarray]:
    out = []
    for row in rows:
        mask, _ = decode_image((preprocessed / row["mask_path"]).read_bytes())
        out.append(mask if mask.ndim == 2 else mask[..., 0])
    return out


def _hmi(real, ids, n, space, rng, between, producer) -> tuple[list, list[dict]]:
    """Intermediates of random pairs until n masks: (masks, records)."""
    made, records = [], []
    alphas = [k / (between + 1) for k in range(1, between + 1)]
    attempts = 0
    while len(made) < n and attempts < 4 * n:
        attempts += 1
        i, j = rng.choice(len(real), 2, replace=False)
        if space == "image":
            mids = masks_core.interpolations(real[i], real[j], between)
        else:
            mids = producer(real[i], real[j], alphas)
        for alpha, mid in zip(alphas, mids, strict=True):
            made.append(mid)
            records.append({"parents": [ids[i], ids[j]], "alpha": alpha, "seed": None})
    return made[:n], records[:n]


def _perturb(real, ids, n, rng, limits) -> tuple[list, list[dict], int]:
    made, records, rejected = [], [], 0
    while len(made) < n and rejected < 10 * n:
        i = int(rng.integers(len(real)))
        out = masks_core.perturb(real[i], rng, limits)
        if out is None:
            rejected += 1
            continue
        made.append(out)
        records.append({"parents": [ids[i]], "alpha": None, "seed": None})
    return made, records, rejected


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    h, w = rows[0][0].shape
    lines = []
    for row in rows:
        cells = list(row[:GRID_COLUMNS])
        cells += [np.full((h, w), 64, np.uint8)] * (GRID_COLUMNS - len(cells))
        lines.append(np.concatenate(cells, axis=1))
    return np.concatenate(lines, axis=0)


def _make(method: str, params: Params, label: str, real, ids, space, producer):
    """`method`'s masks for one class: (masks, records of parents/alpha/seed, rejected)."""
    from defectgen.core import maskgen  # diffusers: loaded only for a class with masks

    cfg = params.masks
    rng = np.random.default_rng(derive_seed(params.seed, "masks", label, method))
    if method == "hmi":

        def latent(a, b, alphas):
            return maskgen.interpolate_latent(producer, a, b, alphas, steps=cfg.ddpm.sample_steps)

        made, records = _hmi(real, ids, cfg.per_class, space, rng, cfg.hmi_between, latent)
        return made, records, 0
    if method == "perturb":
        limits = masks_core.Perturbation(**cfg.perturb.model_dump(), tries=20)
        return _perturb(real, ids, cfg.per_class, rng, limits)
    seeds = [derive_seed(params.seed, "ddpm-sample", label, k) for k in range(cfg.per_class)]
    made = maskgen.sample(producer, seeds, shape=real[0].shape, sample_steps=cfg.ddpm.sample_steps)
    return made, [{"parents": [], "alpha": None, "seed": s} for s in seeds], 0


def _producer(params: Params, label: str, real, curves: Curves):
    """DefFiller's DDPM mask producer trained on the class's real train masks."""
    import torch

    from defectgen.core import maskgen
    from defectgen.core.device import runtime

    d = params.masks.ddpm
    rt = runtime(params.model)
    if rt.device.type == "cpu" and d.steps * d.size**2 > CPU_SIZED:
        print(
            f"[masks] {label}: the DDPM mask producer at {d.size} px for {d.steps} steps runs "
            "for tens of minutes per class on a CPU; the CPU-sized settings are masks.ddpm "
            "{size: 32, steps: 300} (profiles/sd-saliency-900.yaml, README)",
            file=sys.stderr,
            flush=True,
        )
    unet = maskgen.build(
        tuple(d.channels), seed=derive_seed(params.seed, "masks", label), size=d.size
    )
    maskgen.train(
        unet,
        real,
        steps=d.steps,
        batch_size=d.batch_size,
        lr=d.lr,
        gen=torch.Generator().manual_seed(derive_seed(params.seed, "ddpm", label)),
        log=progress(f"masks {label} DDPM {d.size} px", d.steps, curves.logger(f"{label}.ddpm")),
        rt=rt,
    )
    return unet


def _has_defect(preprocessed: Path, row: dict) -> bool:
    mask, _ = decode_image((preprocessed / row["mask_path"]).read_bytes())
    return bool((mask > 127).any())


def _class_unit(unit: Path, params: Params, label: str, real_rows, val_rows, preprocessed, ext):
    """One class: every method's masks, their quality, into the resume unit."""
    from defectgen.core import distances

    cfg = params.masks
    real, ids = _read(preprocessed, real_rows), [r["id"] for r in real_rows]
    val = _read(preprocessed, val_rows)
    space = masks_core.hmi_space(real, cfg.tau)
    curves = Curves()
    producer = None
    if "ddpm" in cfg.methods or ("hmi" in cfg.methods and space == "latent"):
        producer = _producer(params, label, real, curves)
    f_ref = distances.extract(ext, val if len(val) >= 2 else real)
    entry = {
        "hmi_space": space,
        "reference": "val masks" if len(val) >= 2 else "train masks (fewer than 2 val masks)",
        "real": asdict(masks_core.stats(real)),
        "n_real": len(real),
        "methods": {},
    }
    if len(val) >= 2:
        entry[f"{ext.fd_name}_real"] = distances.frechet(distances.extract(ext, real), f_ref)
    accept = masks_core.MaskRange.of(real, cfg.accept.range_factor)
    entry["range"] = asdict(accept)
    made_by = {}
    for method in cfg.methods:
        made, records, rejected = _make(method, params, label, real, ids, space, producer)
        kept = [(m, r) for m, r in zip(made, records, strict=True) if (m > 0).any()]
        in_range = [accept.accepts(m) for m, _ in kept]
        stats = {
            "made": len(kept),
            "accepted": sum(in_range),
            "empty_dropped": len(made) - len(kept),
            "rejected": rejected,
        }
        if kept:
            stats.update(asdict(masks_core.stats([m for m, _ in kept])))
        if len(kept) >= 2:
            feats = distances.extract(ext, [m for m, _ in kept])
            stats[ext.fd_name] = distances.frechet(feats, f_ref)
        entry["methods"][method] = stats
        made_by[method] = (kept, in_range)
    a = cfg.accept
    drops = masks_core.drop_reasons(
        entry["methods"], ext.fd_name, a.min_accepted, a.max_distance_ratio
    )
    table, grid = [], [real]
    for method, (kept, in_range) in made_by.items():
        stats = entry["methods"][method]
        used = [] if method in drops else [k for k, ok in zip(kept, in_range, strict=True) if ok]
        stats["n"] = len(used)
        if method in drops:
            stats["dropped"] = drops[method]
            print(f"[masks] {label}: {method} dropped, {drops[method]}", file=sys.stderr)
        for k, (mask, rec) in enumerate(used):
            rel = f"masks/{label}/{method}_{k:04d}.png"
            write_file(unit / rel, encode_png(mask))
            table.append(
                {
                    "id": f"{label}-{method}-{k:04d}",
                    "label": label,
                    "method": method,
                    "path": rel,
                    "parents": json.dumps(rec["parents"]),
                    "alpha": rec["alpha"],
                    "seed": rec["seed"],
                    "area_ratio": masks_core.area_ratio(mask),
                    "components": masks_core.components(mask),
                }
            )
        # every mask made; the ones pairs will not see in grey
        shown = [
            m if ok and method not in drops else np.where(m > 0, UNUSED_GREY, 0).astype(np.uint8)
            for (m, _), ok in zip(kept, in_range, strict=True)
        ]
        grid.append(shown or [np.zeros(real[0].shape, np.uint8)])
    write_file(unit / "grid.png", encode_png(_grid(grid)))
    atomic_write_json(unit / "entry.json", entry)
    write_file(unit / "rows.json", json.dumps(table).encode())
    curves.write(unit / CURVES_DIR)


def run(params: Params, *, preprocessed: Path, out_dir: Path, params_key: str) -> dict[str, float]:
    """Synthesise masks for every class that has at least 2 real train masks.

    Returns:
        n_masks (the masks pairs may use); per class <class>/<method>/n (used) and
        <class>/<method>/out_of_range and, where measurable, the distance to
        the val masks <class>/<method>/<fd name> and <class>/<fd name>_real (fd name:
        fid or fd_effnet_lite0, as the gate names it); skipped (1.0) without masks.
    """
    cfg = params.masks
    preprocessed, out_dir = Path(preprocessed), Path(out_dir)
    rows = manifest.read_rows(preprocessed)
    masked = [r for r in rows if r["origin"] == "real" and r["mask_path"]]
    if not masked:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / MASKS_JSON, {"skipped": NO_MASKS})
            pd.DataFrame(columns=["id", "label", "method", "path"]).to_parquet(tmp / MASKS_PARQUET)
        return {"n_masks": 0.0, "skipped": 1.0}

    # torch and the feature extractor load here, after the skip: a dataset without masks
    # (the demo's ELPV) runs this stage in seconds
    from defectgen.core.device import runtime
    from defectgen.reference import choose_extractor

    ext, note = choose_extractor(params, runtime(params.model).device)
    key = file_digest(preprocessed / manifest.MANIFEST_NAME)[:16]
    key += params_key
    resume = Resume(out_dir, key)
    report: dict = {"extractor": ext.name, "fd_name": ext.fd_name, "note": note, "classes": {}}
    table: list[dict] = []
    metrics_out: dict[str, float] = {}
    with atomic_dir(out_dir) as tmp:
        for label in sorted({r["label"] for r in masked}):
            if label in params.data.normal_classes:
                report["classes"][label] = {"skipped": NORMAL}
                continue
            mine = sorted((r for r in masked if r["label"] == label), key=lambda r: r["id"])
            train = [
                r for r in mine if r["split"] == "train" and (cfg.data == "train" or r["in_subset"])
            ]
            # an all-zero mask says "no defect here": not a mask to learn shapes from
            train = [r for r in train if _has_defect(preprocessed, r)]
            val = [r for r in mine if r["split"] == "val"]
            if len(train) < 2:
                report["classes"][label] = {"skipped": f"{len(train)} real train masks (< 2)"}
                continue
            done, _ = resume.ensure(
                label, _class_unit, params, label, train, val, preprocessed, ext
            )
            entry = json.loads((done / "entry.json").read_text(encoding="utf-8"))
            report["classes"][label] = entry
            table += json.loads((done / "rows.json").read_text(encoding="utf-8"))
            for path in (done / "masks").rglob("*.png"):
                write_file(tmp / path.relative_to(done), path.read_bytes())
            write_file(tmp / "grids" / f"{label}.png", (done / "grid.png").read_bytes())
            for curve in (done / CURVES_DIR).glob("*.csv"):
                write_file(tmp / CURVES_DIR / curve.name, curve.read_bytes())
            fd = ext.fd_name
            for method, stats in entry["methods"].items():
                metrics_out[f"{label}/{method}/n"] = float(stats["n"])
                metrics_out[f"{label}/{method}/out_of_range"] = float(
                    stats["made"] - stats["accepted"]
                )
                if fd in stats:
                    metrics_out[f"{label}/{method}/{fd}"] = stats[fd]
            if f"{fd}_real" in entry:
                metrics_out[f"{label}/{fd}_real"] = entry[f"{fd}_real"]
        atomic_write_json(tmp / MASKS_JSON, report)
        pd.DataFrame(table).to_parquet(tmp / MASKS_PARQUET, index=False)
    resume.finish()
    metrics_out["n_masks"] = float(len(table))
    return metrics_out
