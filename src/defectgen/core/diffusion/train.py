"""Shared training pieces: pixel tensors, cached VAE latents, the noise-prediction loss,
and the tiny profile's pretraining (VAE reconstruction, then text-conditioned denoising).

Randomness comes only from the `torch.Generator` passed in (a CPU generator; draws
are moved to the model's device), so a run is reproducible from its seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from defectgen.config import VaeLossConfig
from defectgen.core.device import LossBuffer, Runtime
from defectgen.core.diffusion import vae_loss

StepLogger = Callable[[int, float], None]


def prompt_ids(pipe: StableDiffusionPipeline, prompt: str) -> torch.Tensor:
    """(1, 77) token ids, padded as the pipelines pad them."""
    tok = pipe.tokenizer
    return tok(
        prompt,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 images (H, W) or (H, W, C) -> (N, 3, H, W) float32 in [-1, 1]; grey -> 3 channels."""
    arrays = []
    for img in images:
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        arrays.append(img[:, :, :3])
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def from_pixels(x: torch.Tensor, channels: int) -> list[np.ndarray]:
    """(N, 3, H, W) in [-1, 1] -> uint8 images with `channels` channels (1: luminance)."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    if channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return [
            np.clip((a.astype(np.float32) @ weights).round(), 0, 255).astype(np.uint8) for a in arr
        ]
    return list(arr)


@dataclass
class LatentCache:
    """The frozen VAE's posterior (mean, std) of every training image, encoded once.

    Sampling from the cached posterior each step equals encoding each step (the
    diffusers examples' `latent_dist.sample()`), without running the encoder again.
    """

    mean: torch.Tensor  # (N, 4, h, w) float32, CPU
    std: torch.Tensor  # (N, 4, h, w)
    scaling: float

    def __len__(self) -> int:
        return len(self.mean)

    def sample(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Scaled latents for the rows `idx`: (B, 4, h, w)."""
        mean, std = self.mean[idx], self.std[idx]
        return (mean + std * torch.randn(mean.shape, generator=gen)) * self.scaling


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, pixels: torch.Tensor, rt: Runtime, *, flip: bool, batch_size: int = 32
) -> LatentCache:
    """Encode `pixels` (N, 3, H, W) once; with `flip`, their mirror images are added too."""
    if flip:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size].to(rt.device)
        with rt.autocast:
            dist = vae.encode(chunk).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return LatentCache(torch.cat(means), torch.cat(stds), float(vae.config.scaling_factor))


def denoise_loss(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
    rt: Runtime,
    residuals: Callable[[torch.Tensor, torch.Tensor], dict] | None = None,
) -> torch.Tensor:
    """The diffusion objective ||eps - eps_theta(z_t, t, c)||^2 (v-prediction if the base uses it).

    Args:
        latents: (B, 4, h, w) scaled clean latents, CPU.
        cond: (B, L, D) text encoder states on the device.
        residuals: (z_t, t) on the device -> extra UNet keyword arguments (a ControlNet's
            down/mid block residuals), or None.
    """
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    noisy, t = noisy.to(rt.device), t.to(rt.device)
    with rt.autocast:
        extra = residuals(noisy, t) if residuals is not None else {}
        pred = unet(noisy, t, cond, return_dict=False, **extra)[0]
    return F.mse_loss(pred.float(), target.to(rt.device).float())


def _batches(n: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (batch_size,), generator=gen)


def train_vae(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    rt: Runtime,
    log: StepLogger,
    objective: VaeLossConfig | None = None,
    seconds: float | None = None,
) -> int:
    """Pretrain the tiny VAE on reconstruction (`objective`: pixel loss, SD's tiny KL term,
    optional texture terms; default MSE), then set its latent scaling factor to 1 / std of
    the training latents, as SD does. With `seconds`, training stops after that much wall
    time (equal-time comparisons). Returns the steps taken."""
    cfg = objective or VaeLossConfig()
    vae.float().train().requires_grad_(True)  # trainable: float32 master weights
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    # the discriminator's seed; drawn only when there is one, so MSE runs are unchanged
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) if cfg.adversarial else 0
    terms = vae_loss.Objective(cfg, rt.device, steps=steps, seed=seed, seconds=seconds)
    started, step = time.perf_counter(), 0
    with LossBuffer(log) as losses:
        for step in range(steps):  # noqa: B007  (the count is returned)
            if seconds is not None and time.perf_counter() - started > seconds:
                break
            x = pixels[_batches(len(pixels), batch_size, gen)]
            x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))
            x = x.to(rt.device)
            with rt.autocast:
                posterior = vae.encode(x).latent_dist
                eps = torch.randn(posterior.mean.shape, generator=gen).to(rt.device)
                recon = vae.decode(posterior.mean + posterior.std * eps).sample
            loss = terms.vae_loss(recon.float(), x, step)
            loss = loss + cfg.kl_weight * posterior.kl().float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            terms.discriminator_step(recon.float(), x, step)
            losses.add(step, loss)
        else:
            step = steps
    vae.eval().requires_grad_(False)
    cache = encode_latents(vae, pixels, rt, flip=False)
    vae.register_to_config(scaling_factor=float(1.0 / cache.mean.std()))
    return step


def train_denoiser(
    unet: UNet2DConditionModel,
    latents: LatentCache,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    uncond_prob: float,
    gen: torch.Generator,
    rt: Runtime,
    log: StepLogger,
) -> None:
    """Pretrain the tiny UNet: class-agnostic text-conditioned denoising.

    Every image is paired with the same generic prompt (`cond`, (1, L, D)); with
    probability `uncond_prob` the empty prompt (`uncond`) instead, so classifier-free
    guidance works at generation time.
    """
    unet.float().train().requires_grad_(True)  # trainable: float32 master weights
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    with LossBuffer(log) as losses:
        for step in range(steps):
            z = latents.sample(_batches(len(latents), batch_size, gen), gen)
            drop = (torch.rand(len(z), generator=gen) < uncond_prob).to(rt.device)
            c = torch.where(drop[:, None, None], uncond, cond).to(rt.device)
            loss = denoise_loss(unet, noise_scheduler, z, c, gen, rt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.add(step, loss)
    unet.eval().requires_grad_(False)


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, pixels: torch.Tensor, rt: Runtime) -> float:
    """Mean PSNR (dB) of VAE reconstructions (posterior mean) of `pixels` in [-1, 1]."""
    with rt.autocast:
        recon = vae.decode(vae.encode(pixels.to(rt.device)).latent_dist.mean).sample
    mse = ((recon.float().clamp(-1, 1) - pixels.to(rt.device)) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())
