"""Base: the diffusion prior every class adapts from.

- profile `sd15`: load the checkpoint named by model.base (folder or hub id) once, to
  fail early, and record its identity (a sha256 over its weights) in base.json.
- profile `tiny`: random weights are no prior, so pretrain one on the real training
  images (the stand-in for the web-scale prior): the VAE on reconstruction, then the
  UNet on class-agnostic text-conditioned denoising (one generic prompt, dropped with
  probability base.uncond_prob so guidance works). Saved in SD1.5's on-disk layout.
  The VAE's objective is base.vae_loss (MSE by default; SSIM, spectrum, perceptual and
  adversarial terms: core/diffusion/vae_loss.py); its latent shape model.tiny.
  Which images: base.data (default "subset": the few-shot images the `real` condition
  also gets, so the prior smuggles in no extra real data). Never val or test.

Writes under `out_dir`:
    base.json      profile, source, revision, fingerprint, image size
    pipeline/      tiny only: the pretrained StableDiffusionPipeline (save_pretrained)
    curves/        tiny only: pretraining loss curves (vae.csv, unet.csv)
    samples.png    tiny only: train images (top) and their VAE reconstructions (bottom)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.artifacts import BASE_JSON, CURVES_DIR, SAMPLES_PNG
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.cluster import in_cluster
from defectgen.config import BaseConfig, Params
from defectgen.core import distances
from defectgen.core.diffusion import loops, models
from defectgen.core.images import ImageProblem, decode_image, encode_png
from defectgen.curves import Curves
from defectgen.errors import ConfigError
from defectgen.progress import progress
from defectgen.real_images import train_images
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

PSNR_IMAGES = 64  # val images used to measure the VAE's reconstruction quality


def _val_images(preprocessed: Path, n: int) -> list[np.ndarray]:
    """Up to n val images, for measuring reconstruction only (nothing trains on them)."""
    rows = [r for r in manifest.read_rows(preprocessed) if r["split"] == "val"]
    images = []
    for row in sorted(rows, key=lambda r: r["id"]):
        if len(images) == n:
            break
        try:
            images.append(decode_image((preprocessed / row["path"]).read_bytes())[0])
        except (OSError, ImageProblem):
            continue
    return images


@torch.no_grad()
def reconstruct(vae, images: list[np.ndarray], rt: models.Runtime) -> list[np.ndarray]:
    """The VAE's reconstructions (posterior mean) of uint8 images, as uint8 images."""
    channels = 1 if images[0].ndim == 2 else 3
    out = []
    for start in range(0, len(images), 64):
        x = loops.to_pixels(images[start : start + 64]).to(rt.device)
        with rt.autocast:
            recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        out += loops.from_pixels(recon.float().cpu(), channels)
    return out


def recon_distance(
    vae, train_px: list[np.ndarray], val: list[np.ndarray], rt: models.Runtime, *, seed: int
) -> dict[str, float]:
    """The VAE's ceiling on every synthetic image: the Frechet distance (EfficientNet-Lite0
    features) of its reconstructions of N train images to N val images, next to the
    real train images' own distance at the same N (what a perfect VAE would score)."""
    n = min(len(train_px), len(val))
    pick = np.random.default_rng(seed).permutation(len(train_px))[:n]
    real = [train_px[i] for i in sorted(pick)]
    extractor = distances.make_extractor(distances.EFFNET, weights=None, device=rt.device)

    def distance(images: list[np.ndarray]) -> float:
        return distances.frechet(distances.extract(extractor, images), f_val)

    f_val = distances.extract(extractor, val[:n])
    fd = extractor.fd_name
    return {
        f"{fd}_recon": distance(reconstruct(vae, real, rt)),
        f"{fd}_real": distance(real),
        "fd_images": n,
    }


def train_prior_unet(
    pipe, pixels: torch.Tensor, cfg: BaseConfig, *, seed: int, rt: models.Runtime, log
) -> None:
    """Train the tiny UNet on the latents of `pixels` under the trained VAE: class-agnostic,
    `cfg.prompt` (or, with probability `cfg.uncond_prob`, the empty prompt)."""
    latents = loops.encode_latents(pipe.vae, pixels, rt, flip=True)
    with torch.no_grad(), rt.autocast:
        cond, uncond = (
            pipe.text_encoder(loops.prompt_ids(pipe, text).to(rt.device))[0]
            for text in (cfg.prompt, "")
        )
    with models.channels_last(pipe.unet):
        loops.train_denoiser(
            pipe.unet,
            latents,
            cond,
            uncond,
            models.training_scheduler(pipe),
            steps=cfg.unet_steps,
            batch_size=cfg.batch_size,
            lr=cfg.unet_lr,
            uncond_prob=cfg.uncond_prob,
            gen=torch.Generator().manual_seed(derive_seed(seed, "unet")),
            rt=rt,
            log=log,
        )


def _grid(top: list[np.ndarray], bottom: list[np.ndarray]) -> np.ndarray:
    """Two rows of equally sized images, side by side: (2H, N*W[, C])."""
    return np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)


def _record_sd15(params: Params, rt: models.Runtime) -> dict:
    local = Path(params.model.base).expanduser()
    if in_cluster() and not local.exists() and not params.model.revision:
        raise ConfigError(
            f"model.base = {params.model.base!r} is a hub id and model.revision is not set: "
            "in a cluster run every pod loads the weights on its own, and an unpinned id can "
            "change between them. Set model.revision to a commit hash of that repository"
        )
    models.quiet()
    pipe = models.load_pipeline(params.model.base, revision=params.model.revision, rt=rt)
    return {
        "profile": "sd15",
        "source": str(local.resolve()) if local.exists() else params.model.base,
        "revision": params.model.revision,
        "fingerprint": models.fingerprint(pipe),
        "latent_factor": models.latent_factor(pipe.vae),
    }


def _train_vae(unit: Path, pipe, pixels: torch.Tensor, params: Params, rt, curves: Curves):
    """Train the prior's VAE on `pixels` and save it (with its curve) into `unit`."""
    cfg = params.base
    with models.channels_last(pipe.vae):
        loops.train_vae(
            pipe.vae,
            pixels,
            steps=cfg.vae_steps,
            batch_size=cfg.batch_size,
            lr=cfg.vae_lr,
            gen=torch.Generator().manual_seed(derive_seed(params.seed, "vae")),
            rt=rt,
            log=progress("base VAE", cfg.vae_steps, curves.logger("vae")),
            objective=cfg.vae_loss,
        )
    pipe.vae.save_pretrained(unit)
    curves.write(unit / CURVES_DIR)


def _train_unet(unit: Path, pipe, pixels: torch.Tensor, params: Params, rt, curves: Curves):
    """Train the prior's UNet on the frozen VAE's latents; save the whole pipeline."""
    log = progress("base UNet", params.base.unet_steps, curves.logger("unet"))
    train_prior_unet(pipe, pixels, params.base, seed=params.seed, rt=rt, log=log)
    pipe.save_pretrained(unit)
    curves.write(unit / CURVES_DIR)


def run(params: Params, *, preprocessed: Path, out_dir: Path, params_key: str) -> dict[str, float]:
    """Build (tiny: pretrain) or check (sd15) the base model into `out_dir`.

    Returns:
        Metrics. tiny: n_images, vae_loss_last, unet_loss_last, vae_psnr_val_db,
        fd_effnet_lite0_recon and fd_effnet_lite0_real (the VAE's reconstructions of
        fd_images train images, and those images themselves, to as many val images: the
        ceiling of every synthetic image, next to a perfect VAE's), params/unet,
        params/vae, params/text_encoder (+ time/* for MLflow only).
    """
    rt = models.runtime(params.model)
    preprocessed = Path(preprocessed)
    if params.model.profile == "sd15":
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / BASE_JSON, _record_sd15(params, rt))
        return {}

    cfg = params.base
    size = params.preprocess.image_size
    key = file_digest(preprocessed / manifest.MANIFEST_NAME) + params_key
    resume = Resume(out_dir, key[:16] + key[-12:])
    per_class = train_images(preprocessed, data=cfg.data)
    images = [px for items in per_class.values() for _, px in items]
    pixels = loops.to_pixels(images)  # (N, 3, H, W) in [-1, 1]
    curves = Curves()
    times: dict[str, float] = {}

    with atomic_dir(out_dir) as tmp:
        models.quiet()
        pipe = models.build_tiny_pipeline(
            params.model.tiny, image_size=size, work_dir=tmp / "work", seed=params.seed
        ).to(rt.device)  # float32: the tiny base trains here (models.Runtime)
        done, seconds = resume.ensure("vae", _train_vae, pipe, pixels, params, rt, curves)
        if seconds is None:  # finished by an earlier, killed run
            # weights and latent scale into the built VAE: a loaded model's config would
            # also name the resume folder it came from (_name_or_path) in the output
            saved = type(pipe.vae).from_pretrained(done)
            pipe.vae.load_state_dict(saved.state_dict())
            pipe.vae.register_to_config(scaling_factor=saved.config.scaling_factor)
            curves.extend_from(done / CURVES_DIR)
        else:
            times["time/vae_s"] = seconds
        pipe.vae.requires_grad_(False).eval()

        done, seconds = resume.ensure("pipeline", _train_unet, pipe, pixels, params, rt, curves)
        if seconds is None:
            curves.extend_from(done / CURVES_DIR)
        else:
            times["time/unet_s"] = seconds
        shutil.copytree(done, tmp / "pipeline", ignore=shutil.ignore_patterns(CURVES_DIR))
        shutil.rmtree(tmp / "work")

        saved = models.load_pipeline(tmp / "pipeline", revision=None, rt=rt)
        record = {
            "profile": "tiny",
            "source": "pipeline",
            "revision": None,
            "fingerprint": models.fingerprint(saved),
            "latent_factor": models.latent_factor(saved.vae),
            "image_size": size,
            "trained_on": {"data": cfg.data, "n_images": len(images)},
        }
        atomic_write_json(tmp / BASE_JSON, record)
        curves.write(tmp / CURVES_DIR)

        metrics: dict[str, float] = {"n_images": len(images)}
        for series in ("vae", "unet"):
            metrics[f"{series}_loss_last"] = curves.summary(series)["last_mean"]
        val = _val_images(preprocessed, max(PSNR_IMAGES, cfg.fd_images))
        if val:
            pixels_val = loops.to_pixels(val[:PSNR_IMAGES])
            metrics["vae_psnr_val_db"] = loops.reconstruction_psnr(saved.vae, pixels_val, rt)
        if val and cfg.fd_images:
            seed = derive_seed(params.seed, "base-fd")
            metrics.update(recon_distance(saved.vae, images, val[: cfg.fd_images], rt, seed=seed))
        for name in ("unet", "vae", "text_encoder"):
            metrics[f"params/{name}"] = sum(p.numel() for p in getattr(saved, name).parameters())
        shown = pixels[:8]
        with torch.no_grad(), rt.autocast:
            recon = saved.vae.decode(saved.vae.encode(shown.to(rt.device)).latent_dist.mean).sample
        channels = 1 if images[0].ndim == 2 else 3
        grid = _grid(loops.from_pixels(shown, channels), loops.from_pixels(recon, channels))
        write_file(tmp / SAMPLES_PNG, encode_png(grid))
    resume.finish()
    return {**metrics, **times}
