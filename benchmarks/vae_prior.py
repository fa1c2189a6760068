"""The tiny VAE's objective and latent shape, A/B at equal wall time (issue: a better prior).

    .venv/bin/python benchmarks/vae_prior.py --preprocessed data/preprocessed \
        --label elpv --seconds 120 [--variants mse,l1-ssim-fft,...] [--generate 0.5]
    (--steps N instead of --seconds: a fixed step count, e.g. the demo's)

Each variant builds the tiny VAE from params.yaml's model.tiny (with its overrides),
trains it for the same wall time on the base stage's images (base.data, the few-shot
subset by default) with `loops.train_vae`, and is measured on what it was not trained on:
val PSNR and SSIM (64 val images), and the Frechet distance on EfficientNet-Lite0 features
of its reconstructions of N train images to N val images (`fd_effnet_lite0_recon`), next
to the real train images' own distance at the same N (`fd_effnet_lite0_real`: a perfect
VAE). Results: results/vae_prior.md (a block per run) and results/vae_prior-<label>.json.

With --generate, each variant also trains the base UNet on its latents (base.unet_steps,
as the base stage does) and img2img-generates from the same N train images with the base
prompt (no per-class adaptation) at --strength: the synthetic batch's distance to the N
val images (`fd_effnet_lite0_img2img`) and its ratio to the real-vs-real distance (the
gate's criterion, pooled over classes, before adaptation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from defectgen.config import merge_overrides, parse_params
from defectgen.core import distances
from defectgen.core.diffusion import loops, models, sample, vae_loss
from defectgen.real_images import train_images
from defectgen.seeds import derive_seed
from defectgen.stages.base import _val_images, recon_distance, reconstruct, train_prior_unet

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# name -> (base.vae_loss: the whole objective, unnamed keys at their zero/MSE defaults in
# config.VaeLossConfig, not params.yaml's; model.tiny overrides)
VARIANTS = {
    "mse": ({}, {}),  # the old default objective, today's shape
    "l1": ({"pixel": "l1"}, {}),
    "l1-ssim-fft": ({"pixel": "l1", "ssim": 0.5, "fft": 0.5}, {}),
    "l1-ssim-fft-adversarial": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "adversarial": 0.05, "adversarial_start": 0.3},
        {},
    ),
    "l1-adversarial": ({"pixel": "l1", "adversarial": 0.05, "adversarial_start": 0.3}, {}),
    "l1-perceptual": ({"pixel": "l1", "perceptual_effnet_lite0": 0.1}, {}),
    "l1-ssim-fft-perceptual": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "perceptual_effnet_lite0": 0.1},
        {},
    ),
    "l1-ssim-fft-perceptual0.2": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "perceptual_effnet_lite0": 0.2},
        {},
    ),
    "l1-ssim-fft-perceptual0.3": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "perceptual_effnet_lite0": 0.3},
        {},
    ),
    "factor2-l1-ssim-fft-perceptual": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "perceptual_effnet_lite0": 0.1},
        {"vae_channels": [16, 32]},
    ),
    "latent8": ({}, {"latent_channels": 8}),
    "factor2": ({}, {"vae_channels": [16, 32]}),
    "factor2-l1-ssim-fft": ({"pixel": "l1", "ssim": 0.5, "fft": 0.5}, {"vae_channels": [16, 32]}),
}


def img2img_distance(pipe, params, images, val, rt, *, strength: float) -> dict:
    """Train the base UNet on the VAE's latents, then img2img the same N train images the
    reconstruction distance uses; their distance to the N val images and its ratio to
    real-vs-real."""
    started = time.perf_counter()
    train_prior_unet(
        pipe, loops.to_pixels(images), params.base, seed=params.seed, rt=rt, log=lambda s, v: None
    )
    unet_s = time.perf_counter() - started
    n = min(len(images), len(val))
    pick = np.random.default_rng(derive_seed(params.seed, "base-fd")).permutation(len(images))
    parents = [images[i] for i in sorted(pick[:n])]
    gen, started = sample.sampler(pipe, "img2img"), time.perf_counter()
    channels = 1 if parents[0].ndim == 2 else 3
    synthetic: list[np.ndarray] = []
    for start in range(0, n, params.generate.batch_size):
        batch = parents[start : start + params.generate.batch_size]
        synthetic += sample.generate(
            gen, prompt=params.base.prompt, seeds=list(range(start, start + len(batch))),
            parents=batch, strength=strength, guidance=params.generate.guidance,
            steps=params.generate.steps, size=params.preprocess.image_size, channels=channels,
        )  # fmt: skip
    gen_s = time.perf_counter() - started
    extractor = distances.make_extractor(distances.EFFNET, weights=None, device=rt.device)
    f_val = distances.extract(extractor, val[:n])
    fd = distances.frechet(distances.extract(extractor, synthetic), f_val)
    real = distances.frechet(distances.extract(extractor, parents), f_val)
    return {
        "unet_steps": params.base.unet_steps,
        "unet_s": round(unet_s, 1),
        "img2img_strength": strength,
        "img2img_s": round(gen_s, 1),
        f"{extractor.fd_name}_img2img": fd,
        "img2img_ratio": fd / real,
    }


def run_variant(
    raw: dict,
    name: str,
    preprocessed: Path,
    seconds: float | None,
    work: Path,
    strength: float | None,
    steps: int | None = None,
) -> dict:
    loss_over, arch_over = VARIANTS[name]
    raw = merge_overrides(raw, {"model": {"tiny": arch_over}})
    raw["base"] = {**raw["base"], "vae_loss": loss_over}  # the variant's whole objective
    params = parse_params(raw, name)
    rt = models.runtime(params.model)
    per_class = train_images(preprocessed, data=params.base.data)
    images = [px for items in per_class.values() for _, px in items]
    models.quiet()
    pipe = models.build_tiny_pipeline(
        params.model.tiny, image_size=params.preprocess.image_size, work_dir=work, seed=params.seed
    )
    started = time.perf_counter()
    steps = loops.train_vae(
        pipe.vae, loops.to_pixels(images), steps=steps or 1_000_000,
        batch_size=params.base.batch_size,
        lr=params.base.vae_lr, gen=torch.Generator().manual_seed(derive_seed(params.seed, "vae")),
        rt=rt, log=lambda step, loss: None, objective=params.base.vae_loss, seconds=seconds,
    )  # fmt: skip
    wall = time.perf_counter() - started
    val = _val_images(preprocessed, params.base.fd_images)
    x = loops.to_pixels(val[:64])
    recon = loops.to_pixels(reconstruct(pipe.vae, val[:64], rt))
    out = recon_distance(pipe.vae, images, val, rt, seed=derive_seed(params.seed, "base-fd"))
    if strength is not None:
        pipe.vae.requires_grad_(False).eval()
        out.update(img2img_distance(pipe, params, images, val, rt, strength=strength))
    return {
        "variant": name,
        "vae_loss": loss_over,
        "tiny": arch_over,
        "steps": steps,
        "train_s": round(wall, 1),
        "latent": list(pipe.vae.encode(x[:1]).latent_dist.mean.shape[1:]),
        "psnr_val_db": loops.reconstruction_psnr(pipe.vae, x, rt),
        "ssim_val": float(vae_loss.ssim(recon, x)),
        **out,
    }


def markdown(run: dict) -> str:
    lines = [
        f"## {run['label']} ({run['date']}, {run['machine']}, {run['threads']} threads)",
        "",
        f"Data `{run['preprocessed']}`; "
        + (f"{run['seconds']} s" if run.get("seconds") else f"{run['steps']} steps")
        + " of VAE training per variant; "
        f"{run['note']}",
        "",
        "| variant | latent | steps | fd_effnet_lite0_recon | fd_effnet_lite0_real | N "
        "| val PSNR dB | val SSIM |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    generated = "fd_effnet_lite0_img2img" in run["variants"][0]
    if generated:
        lines[-2] += " img2img distance | img2img ratio |"
        lines[-1] += "---:|---:|"
    for r in run["variants"]:
        lines.append(
            f"| {r['variant']} | {'x'.join(map(str, r['latent']))} | {r['steps']} | "
            f"{r['fd_effnet_lite0_recon']:.1f} | {r['fd_effnet_lite0_real']:.1f} | "
            f"{r['fd_images']} | {r['psnr_val_db']:.2f} | {r['ssim_val']:.3f} |"
            + (
                f" {r['fd_effnet_lite0_img2img']:.1f} | {r['img2img_ratio']:.2f} |"
                if generated
                else ""
            )
        )
    if generated:
        r = run["variants"][0]
        lines += [
            "",
            f"img2img: the base UNet after {r['unet_steps']} steps on each variant's latents, "
            f"strength {r['img2img_strength']}, the base prompt, no adaptation; ratio = "
            "img2img distance / fd_effnet_lite0 of the same real train images.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preprocessed", type=Path, required=True)
    ap.add_argument("--label", required=True)
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None, help="VAE wall time (120)")
    budget.add_argument("--steps", type=int, default=None, help="VAE steps instead of time")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--note", default="", help="anything a reader must know (e.g. contention)")
    ap.add_argument(
        "--generate", type=float, default=None, metavar="STRENGTH",
        help="also train the base UNet and measure img2img at this strength",
    )  # fmt: skip
    args = ap.parse_args()
    if args.steps is None and args.seconds is None:
        args.seconds = 120.0
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    work = HERE / "work" / "vae_prior"
    work.mkdir(parents=True, exist_ok=True)
    run = {
        "label": args.label,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "preprocessed": str(args.preprocessed),
        "seconds": args.seconds,
        "steps": args.steps,
        "note": args.note,
        "variants": [],
    }
    for name in args.variants.split(","):
        result = run_variant(
            raw, name, args.preprocessed, args.seconds, work, args.generate, args.steps
        )
        print(json.dumps(result), flush=True)
        run["variants"].append(result)
    results = HERE / "results"
    (results / f"vae_prior-{args.label}.json").write_text(json.dumps(run, indent=1) + "\n")
    with open(results / "vae_prior.md", "a", encoding="utf-8") as f:
        f.write("\n" + markdown(run))
    print(markdown(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
