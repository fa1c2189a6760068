"""Finetune: one StableSDG adapter per defect class (Algorithm 1).

Per class, on the class's real training images (finetune.data: the few-shot subset
by default; never val or test):
    1. textual inversion: a new token (finetune.token_template), only its embedding row
       trains, with the prompt finetune.prompt_template;
    2. LoRA (peft) on the attention projections of the UNet and the text encoder, the
       learned token frozen.
finetune.mode selects the Table II ablations: ti_lora (both), ti (token only), lora
(LoRA only: the token keeps its initial embedding), full_attn (the attention
projections trained in full instead of LoRA; the token keeps its initial embedding);
or Valvano et al.'s dreambooth (section 4.1): the identifier token keeps its initial
embedding, LoRA or the full UNet learns "<prompt with token> <class noun>", regularised
by the prior-preservation loss on images of "<prompt with class noun>" that the base
generated before adaptation (once per run, shared by every class).

Writes under `out_dir`:
    adapters/<class>/learned_embeds.safetensors       diffusers textual-inversion file
    adapters/<class>/pytorch_lora_weights.safetensors diffusers LoRA file (ti_lora, lora)
    adapters/<class>/attention_weights.safetensors    full_attn only
    adapters/<class>/unet_weights.safetensors         dreambooth with dreambooth.train: unet
    prior/<i>.png, prior/prior.json                   dreambooth: the class-prior images
    adapters/<class>/adapter.json                     base identity, token, steps, losses, data
    curves/<class>.<phase>.csv                        loss curves (DVC plots)
    finetune.json                                     the adapters, one summary each

A killed run resumes: finished classes are kept beside `out_dir` and not retrained.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.artifacts import (
    ADAPTER_JSON,
    CURVES_DIR,
    FINETUNE_JSON,
    PRIOR_DIR,
    PRIOR_JSON,
    read_adapter,
    read_base,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import DreamBoothConfig, Params, StepsConfig
from defectgen.core.diffusion import adapt, loops, models, sample
from defectgen.core.images import decode_image, encode_png
from defectgen.curves import Curves
from defectgen.prior import open_base
from defectgen.progress import Units, progress
from defectgen.real_images import train_images
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

_PRIOR_UNIT = ".dreambooth-prior"  # resume unit (class labels never start with a dot)


def token_for(params: Params, label: str) -> str:
    """The class's new token, e.g. '<defective>' (whitespace in labels becomes '_')."""
    return params.finetune.token_template.format(label=re.sub(r"\s+", "_", label))


def prompt_for(params: Params, label: str) -> str:
    """The class's prompt; DreamBooth's names the class noun after the identifier."""
    token = token_for(params, label)
    if params.finetune.mode == "dreambooth":
        token = f"{token} {params.finetune.dreambooth.class_noun}"
    return params.finetune.prompt_template.format(token=token)


def prior_prompt(params: Params) -> str:
    """DreamBooth's class prompt: the template with the class noun alone."""
    return params.finetune.prompt_template.format(token=params.finetune.dreambooth.class_noun)


def _make_prior(
    unit: Path, params: Params, base: Path, rt: models.Runtime, size: int, channels: int
):
    """Generate the class-prior images with the base's ancestral sampler into `unit`."""
    db = params.finetune.dreambooth
    pipe = sample.sampler(open_base(base, params, rt), "txt2img", ancestral=True)
    seeds = [derive_seed(params.seed, "dreambooth-prior", i) for i in range(db.n_prior)]
    images: list[np.ndarray] = []
    for start in range(0, len(seeds), 16):
        images += sample.generate(
            pipe,
            prompt=prior_prompt(params),
            seeds=seeds[start : start + 16],
            parents=None,
            strength=1.0,
            guidance=db.prior_guidance,
            steps=db.prior_steps,
            size=size,
            channels=channels,
        )
    for i, image in enumerate(images):
        write_file(unit / f"{i:04d}.png", encode_png(image))
    atomic_write_json(
        unit / PRIOR_JSON,
        {
            "prompt": prior_prompt(params),
            "n_images": len(images),
            "seeds": seeds,
            "sampler": "ddpm",
            "steps": db.prior_steps,
            "guidance": db.prior_guidance,
            "size": size,
            "images_sha256": file_digest(*sorted(unit.glob("*.png"))),
        },
    )


def _prior(params: Params, base: Path, unit: Path, rt: models.Runtime) -> adapt.Prior:
    """The prior images in `unit` as DreamBooth's prior-preservation term."""
    pipe = open_base(base, params, rt)
    images = [decode_image(p.read_bytes())[0] for p in sorted(unit.glob("*.png"))]
    return adapt.Prior(
        ids=loops.prompt_ids(pipe, prior_prompt(params)),
        latents=loops.encode_latents(pipe.vae, loops.to_pixels(images), rt, flip=False),
        weight=params.finetune.dreambooth.prior_weight,
    )


def _adapt_class(
    unit: Path,
    params: Params,
    base: Path,
    label: str,
    images: list[np.ndarray],
    ids: list[str],
    rt: models.Runtime,
    prior: adapt.Prior | None = None,
) -> dict:
    """Train one class's adapter into `unit`; returns its adapter.json record."""
    cfg = params.finetune
    pipe = open_base(base, params, rt)
    token = token_for(params, label)
    token_id = adapt.add_token(pipe, token, cfg.initializer)
    prompt = prompt_for(params, label)
    latents = loops.encode_latents(pipe.vae, loops.to_pixels(images), rt, flip=cfg.flip)
    noise_scheduler = models.training_scheduler(pipe)
    gen = torch.Generator().manual_seed(derive_seed(params.seed, "finetune", label))
    curves = Curves()
    token_ids = loops.prompt_ids(pipe, prompt)  # (1, 77)
    phases: dict[str, dict] = {}

    def phase(
        name: str, trainable: list, steps: StepsConfig | DreamBoothConfig, prior=None, **info
    ) -> None:
        """Train `trainable` for one phase and record it (losses are added after)."""
        adapt.train(
            pipe,
            trainable,
            token_ids,
            latents,
            noise_scheduler,
            steps=steps.steps,
            lr=steps.lr,
            batch_size=cfg.batch_size,
            gen=gen,
            rt=rt,
            log=progress(f"finetune {label} {name}", steps.steps, curves.logger(f"{label}.{name}")),
            prior=prior,
        )
        phases[name] = {"steps": steps.steps, "lr": steps.lr, **info}

    if cfg.mode in ("ti_lora", "ti"):  # stage 1: only the new token's row
        trainable, commit = adapt.token_parameters(pipe, token_id)
        phase("ti", trainable, cfg.ti, trainable_params=trainable[0].numel())
        commit()  # the row into the embedding table, frozen from here on
    if cfg.mode in ("ti_lora", "lora"):  # stage 2: LoRA on every attention projection
        lora_seed = derive_seed(params.seed, "lora", label)
        trainable = adapt.add_lora(pipe, cfg.lora.rank, cfg.lora.alpha, seed=lora_seed)
        phase(
            "lora",
            trainable,
            cfg.lora,
            rank=cfg.lora.rank,
            alpha=cfg.lora.alpha or cfg.lora.rank,
            trainable_params=sum(p.numel() for p in trainable),
        )
    if cfg.mode == "full_attn":  # ablation: the attention projections in full
        trainable = adapt.attention_parameters(pipe)
        phase(
            "full_attn",
            trainable,
            cfg.full_attn,
            trainable_params=sum(p.numel() for p in trainable),
        )
    db = cfg.dreambooth
    if cfg.mode == "dreambooth":  # Valvano 4.1: the model learns the kept identifier
        if db.train == "lora":
            seed = derive_seed(params.seed, "lora", label)
            trainable = adapt.add_lora(pipe, db.rank, db.alpha, seed=seed)
            shape = {"rank": db.rank, "alpha": db.alpha or db.rank}
        else:
            trainable, shape = adapt.unet_parameters(pipe), {}
        phase(
            "dreambooth",
            trainable,
            db,
            prior=prior,
            train=db.train,
            **shape,
            trainable_params=sum(p.numel() for p in trainable),
            prior_prompt=prior_prompt(params),
            prior_weight=db.prior_weight,
            n_prior=len(prior.latents) if prior is not None else 0,
        )
    dreambooth_lora = cfg.mode == "dreambooth" and db.train == "lora"
    files = adapt.save_adapter(
        pipe,
        unit,
        token=token,
        token_id=token_id,
        lora=cfg.mode in ("ti_lora", "lora") or dreambooth_lora,
        attention=cfg.mode == "full_attn",
        unet=cfg.mode == "dreambooth" and db.train == "unet",
    )
    curves.write(unit / CURVES_DIR)
    for name in phases:
        phases[name]["loss"] = curves.summary(f"{label}.{name}")
    record = read_base(base)
    adapter = {
        "label": label,
        "token": token,
        "prompt": prompt,
        "mode": cfg.mode,
        "adapter_id": file_digest(*(unit / f for f in files))[:16],
        "files": files,
        "base": {k: record.get(k) for k in ("profile", "source", "revision", "fingerprint")},
        "phases": phases,
        "initializer": cfg.initializer,
        "batch_size": cfg.batch_size,
        "resolution": images[0].shape[0],
        "flip": cfg.flip,
        "seed": params.seed,
        "data": {
            "split": "train",
            "selection": cfg.data,
            "n_images": len(images),
            "ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
        },
    }
    atomic_write_json(unit / ADAPTER_JSON, adapter)
    return adapter


def run(
    params: Params, *, preprocessed: Path, base: Path, out_dir: Path, params_key: str
) -> dict[str, float]:
    """Train every class's adapter from the base at `base` into `out_dir`.

    Returns:
        Metrics: n_classes, <class>/<phase>_loss_last (+ time/<class>_s for MLflow only).
    """
    cfg = params.finetune
    preprocessed, base = Path(preprocessed), Path(base)
    rt = models.runtime(params.model)
    record = read_base(base)
    resolution = cfg.resolution or params.preprocess.image_size
    per_class = train_images(preprocessed, data=cfg.data, classes=cfg.classes, size=resolution)
    normal = set(params.data.normal_classes)  # defect-free: classified, never synthesised
    per_class = {c: items for c, items in per_class.items() if c not in normal}
    key = hashlib.sha256(
        (
            file_digest(preprocessed / manifest.MANIFEST_NAME) + record["fingerprint"] + params_key
        ).encode()
    ).hexdigest()[:24]
    resume = Resume(out_dir, key)
    curves = Curves()
    metrics: dict[str, float] = {"n_classes": len(per_class)}
    summary: dict[str, dict] = {}
    prior: adapt.Prior | None = None
    with atomic_dir(out_dir) as tmp:
        if cfg.mode == "dreambooth" and per_class:
            first = next(iter(per_class.values()))[0][1]
            channels = 3 if first.ndim == 3 else 1
            made, _ = resume.ensure(
                _PRIOR_UNIT, _make_prior, params, base, rt, len(first), channels
            )
            shutil.copytree(made, tmp / PRIOR_DIR)
            if any(resume.done(label) is None for label in per_class):  # someone trains
                prior = _prior(params, base, tmp / PRIOR_DIR, rt)
        units = Units("finetune", "class", len(per_class))
        for label, items in per_class.items():
            pixels, ids = [px for _, px in items], [r["id"] for r, _ in items]
            done, seconds = resume.ensure(
                label, _adapt_class, params, base, label, pixels, ids, rt, prior
            )
            units.tick(label, seconds)
            if seconds is not None:
                metrics[f"time/{label}_s"] = seconds
            shutil.copytree(
                done, tmp / "adapters" / label, ignore=shutil.ignore_patterns(CURVES_DIR)
            )
            curves.extend_from(done / CURVES_DIR)
            adapter = read_adapter(tmp / "adapters" / label)
            summary[label] = adapter
            for phase, info in adapter["phases"].items():
                metrics[f"{label}/{phase}_loss_last"] = info["loss"]["last_mean"]
        curves.write(tmp / CURVES_DIR)
        atomic_write_json(tmp / FINETUNE_JSON, summary)
    resume.finish()
    return metrics
