"""Pairs: self-annotated image + mask pairs per class from a mask-conditioned generator
(DefFiller, Valvano et al., DefectSynth stage 2).

Per class with masks from the masks stage:
  1. a ControlNet is initialised from the base UNet (`ControlNetModel.from_unet`) and
     trained, base frozen, on the class's real train images (pairs.data: the few-shot
     subset or all of train) with their own masks as conditioning;
  2. pairs.per_class images are generated, each under one of the masks stage's masks
     (all methods, in a seeded order), and stored with that mask as their annotation.
Background (pairs.background): `generated`, the whole image from noise; `normal`, the
defect generated into a defect-free train image (data.normal_classes; DefectSynth's
stage 2 from a normal image) by blended latent diffusion (core.diffusion.control,
pairs.blend), every pixel beyond the feathered band the background's own; `real`, the
same into a train image of the class, the new mask moved where it keeps pairs.blend
margin px (plus the band) from the image's own defect (core.copypaste.place), the
annotation their union. Backgrounds follow pairs.data (subset or all of train).
Conditioning (pairs.conditioning): `coloured`, the mask painted in the class's colour on
black, or `driver`, Valvano's topological driver: the layout of a real train image of
the class (adaptive threshold, scaled to 0..50) with the coloured mask on top; at
generation the layout comes from a random train image, recorded as the pair's parent:
one of the defect-free classes' (data.normal_classes, Valvano 4.2) where the dataset
has them, else one of the class's own. Defect-free classes get no pairs.
DefectSynth's SAE (pairs.sae: a random real train pair of the class as each image's
reference) and SFF (pairs.sff, over each generated batch) are optional.

Provenance: every pair is a synthetic train row of the manifest with its mask_path,
generator (ControlNet id, base fingerprint) and gen_params (mask id, method and the
mask's real parents, seed, settings). Nothing here reads val or test images: the masks
stage reads train masks only, and every parent is checked to be a train row.

Writes under `out_dir`:
    images/<class>/<id16>.png, masks/<class>/<id16>.png   the pairs
    manifest.parquet        synthetic rows (mask_path set), the gate's and segment's input
    pairs.json              skipped, or per class: counts, settings, training loss
    grids/<class>.png       conditioning (top), generated image, mask outline on the image
    controlnets/<class>/    the trained ControlNet (diffusers save_pretrained)
    curves/<class>.controlnet.csv
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from defectgen import artifacts, manifest
from defectgen.artifacts import (
    BASE_JSON,
    CURVES_DIR,
    GRIDS_DIR,
    MASKS_JSON,
    MASKS_PARQUET,
    PAIRS_JSON,
    read_base,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import PairsConfig, Params
from defectgen.core import masks as masks_core
from defectgen.core.images import decode_image, encode_png, pixel_id
from defectgen.curves import Curves
from defectgen.errors import DataError
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

# class colours for the conditioning images, by the class's position in sorted order
PALETTE = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (128, 0, 255),
)


def colour_of(labels: list[str], label: str) -> tuple[int, int, int]:
    return PALETTE[sorted(labels).index(label) % len(PALETTE)]


def _mask_of(path: Path) -> np.ndarray:
    mask, _ = decode_image(Path(path).read_bytes())
    return mask if mask.ndim == 2 else mask[..., 0]


def _condition(cfg: PairsConfig, image: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    if cfg.conditioning == "driver":
        return masks_core.topological_driver(image, mask, colour)
    return masks_core.coloured(mask, colour)


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image (RGB) with the mask's boundary drawn in red: what the annotation says."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    on = mask > 127
    edge = on & ~ndimage.binary_erosion(on)
    rgb[edge] = (255, 0, 0)
    return rgb


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image


def _grid(conditions, images, masks, backgrounds=None) -> np.ndarray:
    """Rows: the backgrounds (when there are), conditioning, generated image, its mask's
    outline on it."""
    to_rgb = [
        (np.asarray(c) * 255).round().astype(np.uint8) if np.asarray(c).dtype != np.uint8 else c
        for c in conditions
    ]
    rows = [np.concatenate([_rgb(b) for b in backgrounds], axis=1)] if backgrounds else []
    rows += [
        np.concatenate(to_rgb, axis=1),
        np.concatenate([_rgb(i) for i in images], axis=1),
        np.concatenate([_outline(i, m) for i, m in zip(images, masks, strict=True)], axis=1),
    ]
    return np.concatenate(rows, axis=0)


def _on_backgrounds(cfg: PairsConfig, masks, pool, rng):
    """Per mask, the (row, image, own mask) background it goes into and the mask to
    generate there: `normal` as it is; `real` moved beside the background's own defect
    (the first of up to len(pool) random backgrounds with room, else over part of the
    first one's defect). Returns (backgrounds, masks, offsets, overlapping count)."""
    from defectgen.core import copypaste
    from defectgen.core.diffusion import control

    keep = cfg.blend.margin + control.band(cfg.blend.dilate, cfg.blend.feather)
    chosen, moved, offsets, overlapping = [], [], [], 0
    for mask in masks:
        if cfg.background == "normal":
            chosen.append(pool[int(rng.integers(len(pool)))])
            moved.append(mask)
            offsets.append((0, 0))
            continue
        tries = [pool[int(rng.integers(len(pool)))] for _ in range(len(pool))]
        for bg, overlap in [(b, False) for b in tries] + [(tries[0], True)]:
            placed = copypaste.place(mask > 127, bg[2] > 127, keep, rng, overlap=overlap)
            if placed is not None:
                break
        if placed is None:  # larger than the image: cannot happen for masks of its size
            raise DataError(f"pairs: a mask of shape {mask.shape} fits no background")
        region, offset = placed
        overlapping += overlap
        chosen.append(bg)
        moved.append(np.where(region, 255, 0).astype(np.uint8))
        offsets.append(offset)
    return chosen, moved, offsets, overlapping


def _class_unit(
    unit, params, label, labels, real, synthetic_masks, masks_dir, base, rt, layouts_from=None
):
    """One class: train its ControlNet, generate its pairs into `unit`; returns the entry.
    `layouts_from`: the (row, image, mask) triples the drivers take their layouts from
    and pairs.background normal its backgrounds (defect-free images when the dataset
    has them; else the class's own `real`)."""
    import torch

    from defectgen.core.diffusion import control, loops, models
    from defectgen.prior import open_base

    cfg = params.pairs
    colour = colour_of(labels, label)
    pipe = open_base(base, params, rt)
    channels = 1 if real[0][1].ndim == 2 else 3
    images = [px for _, px, _ in real]
    conditions = control.to_conditions([_condition(cfg, px, m, colour) for _, px, m in real])
    latents = loops.encode_latents(pipe.vae, loops.to_pixels(images), rt, flip=False)
    prompt = cfg.prompt_template.format(label=label)
    net = control.build(pipe, seed=derive_seed(params.seed, "controlnet", label))
    curves = Curves()
    control.train(
        pipe,
        net,
        latents,
        conditions,
        loops.prompt_ids(pipe, prompt),
        models.training_scheduler(pipe),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        gen=torch.Generator().manual_seed(derive_seed(params.seed, "pairs", label)),
        rt=rt,
        log=curves.logger(f"{label}.controlnet"),
    )
    net.save_pretrained(unit / "controlnet", safe_serialization=True)
    net_id = hashlib.sha256(
        b"".join(
            (unit / "controlnet" / f).read_bytes()
            for f in sorted(p.name for p in (unit / "controlnet").iterdir())
        )
    ).hexdigest()[:16]
    record = read_base(base)
    generator = (
        f"controlnet-{cfg.conditioning} controlnet={label}:{net_id} "
        f"base={record['profile']}:{record['fingerprint'][:16]}"
    )
    blended = cfg.background != "generated"
    sampler = control.sampler(pipe, net, blend=blended)
    rng = np.random.default_rng(derive_seed(params.seed, "pairs-order", label))
    order = rng.permutation(len(synthetic_masks))
    rows, shown, seen, duplicates, overlapping = [], ([], [], [], []), set(), 0, 0
    for start in range(0, cfg.per_class, cfg.generate_batch):
        index = list(range(start, min(start + cfg.generate_batch, cfg.per_class)))
        chosen = [synthetic_masks[order[i % len(order)]] for i in index]
        masks = [_mask_of(masks_dir / m["path"]) for m in chosen]
        offsets, backgrounds = [None] * len(index), None
        if blended:  # the background is the layout too: the driver describes what is there
            pool = real if cfg.background == "real" else layouts_from
            layouts, masks, offsets, n = _on_backgrounds(cfg, masks, pool, rng)
            overlapping += n
            backgrounds = control.Backgrounds(
                [px for _, px, _ in layouts],
                cfg.blend.strength,
                cfg.blend.dilate,
                cfg.blend.feather,
            )
        else:
            pool = layouts_from or real
            layouts = [pool[int(rng.integers(len(pool)))] for _ in index]
        conds = [
            _condition(cfg, px, m, colour) for (_, px, _), m in zip(layouts, masks, strict=True)
        ]
        references = [real[int(rng.integers(len(real)))] for _ in index] if cfg.sae else None
        seeds = [derive_seed(params.seed, "pairs", label, i) for i in index]
        pairs = control.generate_pairs(
            sampler,
            prompt=prompt,
            masks=masks,
            conditions=conds,
            seeds=seeds,
            guidance=cfg.guidance,
            steps=cfg.sample_steps,
            channels=channels,
            scale=cfg.conditioning_scale,
            sae=[(px, m) for _, px, m in references] if references else None,
            sff=(cfg.sff.rate, cfg.sff.base_weight) if cfg.sff.enabled else None,
            backgrounds=backgrounds,
        )
        for k, (i, (image, mask)) in enumerate(zip(index, pairs, strict=True)):
            if cfg.background == "real":  # the annotation: the new defect and the old one
                mask = np.where((mask > 127) | (layouts[k][2] > 127), 255, 0).astype(np.uint8)
            oid = pixel_id(image)
            if oid in seen:  # the model repeated an earlier image exactly: keep one
                duplicates += 1
                continue
            seen.add(oid)
            rel, mrel = f"images/{label}/{oid[:16]}.png", f"masks/{label}/{oid[:16]}.png"
            write_file(unit / rel, encode_png(image))
            write_file(unit / mrel, encode_png(mask))
            layout = layouts[k][0]
            parent = layout["id"] if cfg.conditioning == "driver" or blended else None
            gen_params = {
                "prompt": prompt,
                "conditioning": cfg.conditioning,
                "guidance": cfg.guidance,
                "steps": cfg.sample_steps,
                "scheduler": "DDIMScheduler",
                "seed": seeds[k],
                "index": i,
                "conditioning_scale": cfg.conditioning_scale,
                "mask_id": chosen[k]["id"],
                "mask_method": chosen[k]["method"],
                "mask_parents": json.loads(chosen[k]["parents"]),
                "layout_id": layout["id"] if cfg.conditioning == "driver" else None,
                "sae_reference": references[k][0]["id"] if references else None,
                "sff": cfg.sff.model_dump() if cfg.sff.enabled else None,
                "background": cfg.background,
                "background_id": layout["id"] if blended else None,
                "blend": cfg.blend.model_dump() if blended else None,
                "mask_offset": list(offsets[k]) if cfg.background == "real" else None,
            }
            rows.append(
                manifest.make_row(
                    id=oid,
                    path=rel,
                    label=label,
                    split="train",
                    width=image.shape[1],
                    height=image.shape[0],
                    channels=channels,
                    origin="synthetic",
                    mask_path=mrel,
                    parent_id=parent,
                    generator=generator,
                    gen_params=json.dumps(gen_params, sort_keys=True),
                    source=layout["source"],
                )
            )
            if len(shown[0]) < cfg.grid_per_class:
                shown[0].append(conds[k])
                shown[1].append(image)
                shown[2].append(mask)
                shown[3].append(layouts[k][1])
    manifest.write_manifest(rows, unit / manifest.MANIFEST_NAME)
    write_file(unit / "grid.png", encode_png(_grid(*shown[:3], shown[3] if blended else None)))
    curves.write(unit / CURVES_DIR)
    entry = {
        "n": len(rows),
        "duplicates": duplicates,
        "n_real": len(real),
        "conditioning": cfg.conditioning,
        "background": cfg.background,
        "overlapping": overlapping,  # real: new masks over part of the image's own defect
        "sae": cfg.sae,
        "sff": cfg.sff.enabled,
        "controlnet_id": net_id,
        "masks_by_method": dict(
            Counter(synthetic_masks[order[i % len(order)]]["method"] for i in range(cfg.per_class))
        ),
        "loss": curves.summary(f"{label}.controlnet"),
    }
    atomic_write_json(unit / "entry.json", entry)
    return entry


def _real_pairs(preprocessed: Path, rows: list[dict], data: str, label: str):
    """The class's real train (row, image, mask) triples the ControlNet learns from."""
    picked = sorted(
        (
            r
            for r in rows
            if r["label"] == label
            and r["split"] == "train"
            and r["origin"] == "real"
            and r["mask_path"]
            and (data == "train" or r["in_subset"])
        ),
        key=lambda r: r["id"],
    )
    out = []
    for row in picked:
        image, _ = decode_image((preprocessed / row["path"]).read_bytes())
        out.append((row, image, _mask_of(preprocessed / row["mask_path"])))
    return out


def _normal_images(preprocessed: Path, rows: list[dict], params: Params):
    """The defect-free classes' real train (row, image, empty mask) triples."""
    picked = sorted(
        (
            r
            for r in rows
            if r["label"] in params.data.normal_classes
            and r["split"] == "train"
            and r["origin"] == "real"
            and (params.pairs.data == "train" or r["in_subset"])
        ),
        key=lambda r: r["id"],
    )
    out = []
    for row in picked:
        image, _ = decode_image((preprocessed / row["path"]).read_bytes())
        out.append((row, image, np.zeros(image.shape[:2], np.uint8)))
    return out or None


def run(
    params: Params, *, preprocessed: Path, base: Path, masks: Path, out_dir: Path, params_key: str
) -> dict[str, float]:
    """Generate pairs.per_class image + mask pairs for every class the masks stage served.

    Returns:
        n_pairs; per class <class>/n and <class>/controlnet_loss (last tenth's mean);
        skipped (1.0) when the masks stage skipped (no masks).
    """
    preprocessed, base, masks_dir = Path(preprocessed), Path(base), Path(masks)
    report_path = masks_dir / MASKS_JSON
    if not report_path.is_file():
        raise DataError(f"{report_path}: missing; pass the masks stage's output as --masks")
    masks_report = json.loads(report_path.read_text(encoding="utf-8"))
    if "skipped" in masks_report:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / PAIRS_JSON, {"skipped": masks_report["skipped"]})
            manifest.write_manifest([], tmp / manifest.MANIFEST_NAME)
        return {"n_pairs": 0.0, "skipped": 1.0}

    rows = manifest.read_rows(preprocessed)
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    table = artifacts.read_masks_table(masks_dir)
    leaked = [t["id"] for t in table if set(json.loads(t["parents"])) - train_ids]
    if leaked:  # the masks stage reads train masks only; the invariant that matters
        raise DataError(f"{masks_dir}: masks with parents outside train: {leaked[:3]}")
    labels = sorted({r["label"] for r in rows})
    # the diffusion stack loads here, after the skip: without masks it takes seconds
    from defectgen.core.diffusion import models

    rt = models.runtime(params.model)
    key = file_digest(
        preprocessed / manifest.MANIFEST_NAME,
        base / BASE_JSON,
        masks_dir / MASKS_PARQUET,
    )[:16]
    key += params_key
    resume = Resume(out_dir, key)
    report: dict = {"classes": {}}
    all_rows: list[dict] = []
    metrics_out: dict[str, float] = {}
    normal = None  # Valvano 4.2: drivers built from defect-free images where there are some
    if params.pairs.background == "normal" or (
        params.pairs.conditioning == "driver" and params.data.normal_classes
    ):
        normal = _normal_images(preprocessed, rows, params)
    if params.pairs.background == "normal" and normal is None:
        raise DataError(
            f"pairs.background normal: no defect-free {params.pairs.data} images "
            f"(data.normal_classes {params.data.normal_classes}); name the defect-free "
            "classes in data.normal_classes, or set pairs.background to real or generated"
        )
    with atomic_dir(out_dir) as tmp:
        for label, entry in masks_report["classes"].items():
            if "skipped" not in entry and not any(t["label"] == label for t in table):
                report["classes"][label] = {
                    "skipped": "the masks stage used none of its "
                    "masks (masks.json: every method dropped)"
                }
        for label in sorted({t["label"] for t in table}):
            mine = [t for t in table if t["label"] == label]
            real = None  # read only when the class's unit is still to be made
            if resume.done(label) is None:
                real = _real_pairs(preprocessed, rows, params.pairs.data, label)
                if not real:
                    report["classes"][label] = {"skipped": "no real train images with masks"}
                    continue
            done, _ = resume.ensure(
                label,
                _class_unit,
                params,
                label,
                labels,
                real,
                mine,
                masks_dir,
                base,
                rt,
                layouts_from=normal,
            )
            entry = json.loads((done / "entry.json").read_text(encoding="utf-8"))
            class_rows = manifest.read_rows(done)
            for folder in ("images", "masks"):
                for path in (done / folder / label).glob("*.png"):
                    write_file(tmp / path.relative_to(done), path.read_bytes())
            for path in (done / "controlnet").iterdir():
                write_file(tmp / "controlnets" / label / path.name, path.read_bytes())
            write_file(tmp / GRIDS_DIR / f"{label}.png", (done / "grid.png").read_bytes())
            for curve in (done / CURVES_DIR).glob("*.csv"):
                write_file(tmp / CURVES_DIR / curve.name, curve.read_bytes())
            report["classes"][label] = entry
            all_rows += class_rows
            metrics_out[f"{label}/n"] = float(entry["n"])
            if entry["loss"]:
                metrics_out[f"{label}/controlnet_loss"] = entry["loss"]["last_mean"]
        manifest.write_manifest(all_rows, tmp / manifest.MANIFEST_NAME)
        atomic_write_json(tmp / PAIRS_JSON, report)
    resume.finish()
    metrics_out["n_pairs"] = float(len(all_rows))
    return metrics_out
