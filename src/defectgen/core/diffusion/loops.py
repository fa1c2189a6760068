"""Shared training pieces: pixel tensors, cached VAE latents, the noise-prediction loss,
and the tiny profile's pretraining (VAE reconstruction, then text-conditioned denoising).

Randomness comes only from the `torch.Generator` passed in (a CPU generator), so a run
is reproducible from its seed. The loops never wait on the host: every step's draws are
made ahead in chunks (`Draws`), in the order a step would make them, and reach the device
in one pinned, non-blocking copy per chunk; images and latent caches are put on the
device once; losses are read back every `LossBuffer.every` steps. On the CPU the result
is bit-identical to drawing each step's numbers as it runs (tests/core/test_diffusion_loops.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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


StepDraws = Callable[[torch.Generator], dict[str, torch.Tensor]]


class Draws:
    """One training loop's random numbers, drawn ahead: iterating yields, for each of
    `steps` steps, the dict `draw(gen)` returns, on `rt.device`.

    `draw` makes one step's draws from the CPU generator; it is called `chunk` times per
    chunk, in step order, so the generator yields exactly the numbers (and ends in exactly
    the state) it would if each step drew its own as it ran. A chunk is stacked per key and
    copied in one transfer, pinned and non-blocking on CUDA: the loop never stops the
    device to copy a step's noise. A loop that stops early (a wall-time budget) has drawn
    up to one chunk more than it used."""

    def __init__(
        self, draw: StepDraws, gen: torch.Generator, rt: Runtime, *, steps: int, chunk: int = 50
    ) -> None:
        self.draw, self.gen, self.rt, self.steps, self.chunk = draw, gen, rt, steps, chunk

    def _next_chunk(self, n: int) -> dict[str, torch.Tensor]:
        rows = [self.draw(self.gen) for _ in range(n)]
        pin = self.rt.device.type == "cuda"
        out = {}
        for key in rows[0]:
            stacked = torch.stack([r[key] for r in rows])
            if pin:
                stacked = stacked.pin_memory()
            out[key] = stacked.to(self.rt.device, non_blocking=True)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, self.steps, self.chunk):
            n = min(self.chunk, self.steps - start)
            block = self._next_chunk(n)
            for i in range(n):
                yield {key: value[i] for key, value in block.items()}


@dataclass
class LatentCache:
    """The frozen VAE's posterior (mean, std) of every training image, encoded once.

    Sampling from the cached posterior each step equals encoding each step (the
    diffusers examples' `latent_dist.sample()`), without running the encoder again.
    """

    mean: torch.Tensor  # (N, 4, h, w) float32
    std: torch.Tensor  # (N, 4, h, w)
    scaling: float

    def __len__(self) -> int:
        return len(self.mean)

    def to(self, device: torch.device) -> LatentCache:
        """The cache on `device` (a training loop puts it there once)."""
        return LatentCache(self.mean.to(device), self.std.to(device), self.scaling)

    def draw(self, batch_size: int, gen: torch.Generator, prefix: str = "") -> dict:
        """One step's draws for `latents`: the batch rows, then the posterior noise."""
        idx = torch.randint(0, len(self), (batch_size,), generator=gen)
        eps = torch.randn((batch_size, *self.mean.shape[1:]), generator=gen)
        return {prefix + "idx": idx, prefix + "eps": eps}

    def latents(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Scaled latents of the rows `idx` with posterior noise `eps`: (B, 4, h, w)."""
        return (self.mean[idx] + self.std[idx] * eps) * self.scaling


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, pixels: torch.Tensor, rt: Runtime, *, flip: bool, batch_size: int = 32
) -> LatentCache:
    """Encode `pixels` (N, 3, H, W) once; with `flip`, their mirror images are added too.
    The cache is returned on the CPU (a loop moves it to its device)."""
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


def noise_draw(
    noise_scheduler: DDPMScheduler, shape: tuple[int, ...], gen: torch.Generator, prefix: str = ""
) -> dict:
    """One step's draws for `denoise_loss`: the noise (`shape`), then one timestep per row."""
    noise = torch.randn(shape, generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (shape[0],), generator=gen)
    return {prefix + "noise": noise, prefix + "t": t}


def denoise_loss(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    rt: Runtime,
    residuals: Callable[[torch.Tensor, torch.Tensor], dict] | None = None,
) -> torch.Tensor:
    """The diffusion objective ||eps - eps_theta(z_t, t, c)||^2 (v-prediction if the base uses it).

    Args:
        latents: (B, 4, h, w) scaled clean latents; noise (same shape) and t (B,) from
            `noise_draw`; all on the device.
        cond: (B, L, D) text encoder states on the device.
        residuals: (z_t, t) -> extra UNet keyword arguments (a ControlNet's down/mid
            block residuals), or None.
    """
    noisy = noise_scheduler.add_noise(latents, noise, t)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    with rt.autocast:
        extra = residuals(noisy, t) if residuals is not None else {}
        pred = unet(noisy, t, cond, return_dict=False, **extra)[0]
    return F.mse_loss(pred.float(), target.float())


def latent_shape(vae: AutoencoderKL, batch_size: int, pixels: torch.Tensor) -> tuple[int, ...]:
    """The VAE's latent shape for a batch of `pixels`' size: (B, C, H / f, W / f)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = pixels.shape[-2:]
    return (batch_size, vae.config.latent_channels, h // factor, w // factor)


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
    chunk: int = 50,
) -> int:
    """Pretrain the tiny VAE on reconstruction (`objective`: pixel loss, SD's tiny KL term,
    optional texture terms; default MSE), then set its latent scaling factor to 1 / std of
    the training latents, as SD does. With `seconds`, training stops after that much wall
    time (equal-time comparisons). Returns the steps taken."""
    cfg = objective or VaeLossConfig()
    vae.float().train().requires_grad_(True)  # trainable: float32 master weights
    opt = optimizer(torch.optim.Adam, vae.parameters(), lr, rt)
    # the discriminator's seed; drawn only when there is one, so MSE runs are unchanged
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) if cfg.adversarial else 0
    terms = vae_loss.Objective(cfg, rt, steps=steps, seed=seed, seconds=seconds)
    shape = latent_shape(vae, batch_size, pixels)

    def draw(g: torch.Generator) -> dict:  # batch rows, mirror coin, posterior noise
        idx = torch.randint(0, len(pixels), (batch_size,), generator=g)
        return {
            "idx": idx,
            "flip": torch.rand(batch_size, 1, 1, 1, generator=g),
            "eps": torch.randn(shape, generator=g),
        }

    images = pixels.to(rt.device)
    started, step = time.perf_counter(), 0
    with LossBuffer(log) as losses:
        for step, d in enumerate(Draws(draw, gen, rt, steps=steps, chunk=chunk)):
            if seconds is not None and time.perf_counter() - started > seconds:
                break
            x = images[d["idx"]]
            x = torch.where(d["flip"] < 0.5, x, x.flip(-1))
            with rt.autocast:
                posterior = vae.encode(x).latent_dist
                recon = vae.decode(posterior.mean + posterior.std * d["eps"]).sample
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
    chunk: int = 50,
) -> None:
    """Pretrain the tiny UNet: class-agnostic text-conditioned denoising.

    Every image is paired with the same generic prompt (`cond`, (1, L, D)); with
    probability `uncond_prob` the empty prompt (`uncond`) instead, so classifier-free
    guidance works at generation time.
    """
    unet.float().train().requires_grad_(True)  # trainable: float32 master weights
    opt = optimizer(torch.optim.Adam, unet.parameters(), lr, rt)
    cache = latents.to(rt.device)
    shape = (batch_size, *latents.mean.shape[1:])

    def draw(g: torch.Generator) -> dict:  # latents, prompt dropout, noise and timesteps
        rows = latents.draw(batch_size, g)
        return {
            **rows,
            "drop": torch.rand(batch_size, generator=g),
            **noise_draw(noise_scheduler, shape, g),
        }

    cond, uncond = cond.to(rt.device), uncond.to(rt.device)
    with LossBuffer(log) as losses:
        for step, d in enumerate(Draws(draw, gen, rt, steps=steps, chunk=chunk)):
            z = cache.latents(d["idx"], d["eps"])
            c = torch.where((d["drop"] < uncond_prob)[:, None, None], uncond, cond)
            loss = denoise_loss(unet, noise_scheduler, z, d["noise"], d["t"], c, rt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.add(step, loss)
    unet.eval().requires_grad_(False)


def optimizer(cls, parameters, lr: float, rt: Runtime) -> torch.optim.Optimizer:
    """`cls` (Adam, AdamW) over `parameters`: fused into one kernel per step on CUDA
    (torch's fused implementation); on the CPU the reference for-each implementation, whose
    results the CPU tests pin bit for bit."""
    fused = {"fused": True} if rt.device.type == "cuda" else {}
    return cls(parameters, lr=lr, **fused)


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, pixels: torch.Tensor, rt: Runtime) -> float:
    """Mean PSNR (dB) of VAE reconstructions (posterior mean) of `pixels` in [-1, 1]."""
    with rt.autocast:
        recon = vae.decode(vae.encode(pixels.to(rt.device)).latent_dist.mean).sample
    mse = ((recon.float().clamp(-1, 1) - pixels.to(rt.device)) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())
