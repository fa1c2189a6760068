"""Generate: synthetic images per class from the base + the class's adapter.

generate.mode img2img is StableSDG's image-oriented generation (III-C):
each image starts from a real train image of its class (the images its adapter saw)
noised to strength s, denoised with guidance w (per class: generate.per_class, else
the global values). txt2img starts from pure noise (the Table II ablation).
With the sweep stage's output (--sweep), each class uses its chosen cell instead.
Image i of a class uses its own seed, derived from params seed, class and i; its
parent is drawn from a seeded permutation of the class's images, so every image can be
regenerated from its manifest row.

Writes under `out_dir`:
    images/<class>/<id16>.png
    manifest.parquet    synthetic rows only: split train, parent_id, generator, gen_params
    samples.png         per class: real parents (top row) and images generated from them
    generate.json       per class: count, strength, guidance, duplicates dropped
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from defectgen import manifest
from defectgen.artifacts import (
    BASE_JSON,
    FINETUNE_JSON,
    GENERATE_JSON,
    SAMPLES_PNG,
    read_base,
    read_chosen,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core.diffusion import models, sample
from defectgen.core.images import encode_png, pixel_id, resize
from defectgen.errors import DataError
from defectgen.prior import open_class
from defectgen.progress import Units
from defectgen.real_images import train_images
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed, parent_order

if TYPE_CHECKING:  # diffusers is imported through core.diffusion (torchvision shim first)
    pass


def _generate_class(
    unit: Path,
    params: Params,
    base: Path,
    adapter_dir: Path,
    parents: list[tuple[dict, np.ndarray]],
    rt: models.Runtime,
    settings: tuple[float, float],
) -> dict:
    """Generate one class's images into `unit` (images/ + manifest.parquet); returns counts."""
    cfg = params.generate
    sampler, adapter = open_class(params, base, adapter_dir, rt, mode=params.generate.mode)
    label, size = adapter["label"], adapter["resolution"]
    strength, guidance = settings
    record = read_base(base)
    generator = (
        f"stablesdg-{cfg.mode} adapter={label}:{adapter['adapter_id']} "
        f"base={record['profile']}:{record['fingerprint'][:16]}"
    )
    channels = 1 if parents[0][1].ndim == 2 else 3
    order = parent_order(params.seed, label, len(parents))
    rows, seen, duplicates = [], set(), 0
    all_seeds = [
        derive_seed(params.seed, "generate", label, i) for i in range(cfg.images_per_class)
    ]
    all_chosen = [parents[order[i % len(parents)]] for i in range(cfg.images_per_class)]
    batches = sample.in_batches(
        sampler,
        prompt=adapter["prompt"],
        seeds=all_seeds,
        parents=[resize(px, size) for _, px in all_chosen] if cfg.mode == "img2img" else None,
        batch_size=cfg.batch_size,
        strength=strength,
        guidance=guidance,
        steps=cfg.steps,
        size=size,
        channels=channels,
    )
    for index, images in batches:
        seeds = [all_seeds[i] for i in index]
        chosen = [all_chosen[i] for i in index]
        for i, seed, (parent, _), img in zip(index, seeds, chosen, images, strict=True):
            oid = pixel_id(img)
            if oid in seen:  # the model copied an earlier output exactly: keep one
                duplicates += 1
                continue
            seen.add(oid)
            rel = f"images/{label}/{oid[:16]}.png"
            write_file(unit / rel, encode_png(img))
            gen_params = {
                "mode": cfg.mode,
                "prompt": adapter["prompt"],
                "strength": strength if cfg.mode == "img2img" else None,
                "guidance": guidance,
                "steps": cfg.steps,
                "scheduler": "DDIMScheduler",
                "seed": seed,
                "index": i,
                "size": size,
            }
            rows.append(
                manifest.make_row(
                    id=oid,
                    path=rel,
                    label=label,
                    split="train",
                    width=size,
                    height=size,
                    channels=channels,
                    origin="synthetic",
                    parent_id=parent["id"] if cfg.mode == "img2img" else None,
                    generator=generator,
                    gen_params=json.dumps(gen_params, sort_keys=True),
                    source=parent["source"],
                )
            )
    manifest.write_manifest(rows, unit / manifest.MANIFEST_NAME)
    return {"n": len(rows), "duplicates": duplicates}


def _grid(per_class: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]) -> np.ndarray:
    """Per class two rows: real images (top) and generated ones (bottom), a label strip left."""
    bands = []
    for label, (real, fake) in per_class.items():
        k = min(len(real), len(fake))
        band = np.concatenate(
            [np.concatenate(real[:k], axis=1), np.concatenate(fake[:k], axis=1)], axis=0
        )
        strip = Image.new("L" if band.ndim == 2 else "RGB", (96, band.shape[0]), 0)
        ImageDraw.Draw(strip).text(
            (4, 4), f"{label}\nreal\n\n\ngen", fill=255 if band.ndim == 2 else (255, 255, 255)
        )
        bands.append(np.concatenate([np.asarray(strip), band], axis=1))
    width = max(b.shape[1] for b in bands)
    padded = [np.pad(b, [(0, 4), (0, width - b.shape[1])] + [(0, 0)] * (b.ndim - 2)) for b in bands]
    return np.concatenate(padded, axis=0)


def run(
    params: Params,
    *,
    preprocessed: Path,
    base: Path,
    adapters: Path,
    out_dir: Path,
    sweep: Path | None = None,
    params_key: str,
) -> dict[str, float]:
    """Generate generate.images_per_class images for every class that has an adapter.

    Strength and guidance per class: the sweep stage's chosen.json in `sweep` when
    given, else generate.per_class / generate.strength / generate.guidance.

    Returns:
        Metrics: n_images, n_duplicates, <class>/n, <class>/strength, <class>/guidance
        (+ time/<class>_s and time/images_per_s for MLflow only).
    """
    cfg = params.generate
    preprocessed, base, adapters = Path(preprocessed), Path(base), Path(adapters)
    summary_path = adapters / FINETUNE_JSON
    if not summary_path.is_file():
        raise DataError(f"{summary_path}: missing; pass the finetune stage's output as --adapters")
    labels = sorted(json.loads(summary_path.read_text(encoding="utf-8")))
    rt = models.runtime(params.model)
    per_class = train_images(preprocessed, data=params.finetune.data, classes=labels)
    train_ids = {r["id"] for r in manifest.read_rows(preprocessed) if r["split"] == "train"}
    if sweep is not None:
        chosen = read_chosen(sweep, labels)
        settings = {c: (chosen[c]["strength"], chosen[c]["guidance"]) for c in labels}
    else:
        settings = {c: cfg.settings(c) for c in labels}
    key = (
        file_digest(preprocessed / manifest.MANIFEST_NAME, base / BASE_JSON, summary_path)[:16]
        + params_key
    )
    key += hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    resume = Resume(out_dir, key)
    metrics: dict[str, float] = {}
    report: dict[str, dict] = {}
    rows: list[dict] = []
    shown: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    total_s = 0.0
    units = Units("generate", "class", len(labels))
    with atomic_dir(out_dir) as tmp:
        for label in labels:
            done, seconds = resume.ensure(
                label,
                _generate_class,
                params,
                base,
                adapters / "adapters" / label,
                per_class[label],
                rt,
                settings[label],
            )
            units.tick(label, seconds)
            if seconds is not None:
                metrics[f"time/{label}_s"] = seconds
                total_s += seconds
            class_rows = manifest.read_rows(done)
            leaked = [
                r["path"] for r in class_rows if r["parent_id"] and r["parent_id"] not in train_ids
            ]
            if leaked:  # cannot happen by construction; a guard for the invariant that matters
                raise DataError(
                    f"{done}: synthetic images with parents outside train: {leaked[:3]}"
                )
            shutil.copytree(done / "images" / label, tmp / "images" / label)
            rows.extend(class_rows)
            strength, guidance = settings[label]
            report[label] = {
                "n": len(class_rows),
                "duplicates": cfg.images_per_class - len(class_rows),
                "strength": strength if cfg.mode == "img2img" else None,
                "guidance": guidance,
                "mode": cfg.mode,
                "settings_from": "sweep" if sweep is not None else "params",
            }
            metrics[f"{label}/n"] = len(class_rows)
            metrics[f"{label}/guidance"] = guidance
            if cfg.mode == "img2img":
                metrics[f"{label}/strength"] = strength
            by_id = {r["id"]: px for r, px in per_class[label]}
            first = class_rows[: cfg.grid_per_class]
            size = first[0]["width"]
            real = [
                resize(by_id[r["parent_id"]], size) if r["parent_id"] else resize(px, size)
                for r, (_, px) in zip(first, per_class[label], strict=False)
            ]
            fake = [np.asarray(Image.open(done / r["path"])) for r in first]
            shown[label] = (real, fake)
        manifest.write_manifest(rows, tmp / manifest.MANIFEST_NAME)
        write_file(tmp / SAMPLES_PNG, encode_png(_grid(shown)))
        atomic_write_json(tmp / GENERATE_JSON, report)
    resume.finish()
    metrics["n_images"] = len(rows)
    metrics["n_duplicates"] = sum(r["duplicates"] for r in report.values())
    if total_s:
        metrics["time/images_per_s"] = len(rows) / total_s
    return metrics
