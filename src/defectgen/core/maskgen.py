"""DefFiller's mask producer (4.4.1): a DDPM trained from scratch on a class's
real masks at 64x64, sampled, binarised and resized to the image size.

The paper trains 200 epochs at batch 32, lr 1e-4; the schedule here is the caller's
(`steps`), so the CPU demo can run a short one. Training sees the masks and their
horizontal and vertical flips (a defect's mirror image is as plausible as the defect).
Sampling uses DDIM on the same noise schedule (`sample_steps`, 50 by default), one
`torch.Generator` per mask, so each mask depends on its seed only.

`interpolate_latent` is DefectSynth's latent-space mask interpolation (III-C)
on this producer: both masks DDIM-inverted to their noise, slerp between the noises,
DDIM back and binarise. (DefectSynth inverts SD's VAE latents with its image model; a
mask-only producer works in pixel space, so its noise is the latent.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from defectgen._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before diffusers imports transformers -> torchvision

from diffusers import (  # noqa: E402
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DModel,
)

from defectgen.core.device import CPU, LossBuffer, Runtime  # noqa: E402

SIZE = 64
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


def build(channels: tuple[int, ...] = (32, 64, 64), *, seed: int, size: int = SIZE) -> UNet2DModel:
    """A small pixel-space UNet for one-channel masks (random weights from `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=size,
            in_channels=1,
            out_channels=1,
            block_out_channels=channels,
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * (len(channels) - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(channels) - 1),
            norm_num_groups=8,
        )


def to_tensor(masks: list[np.ndarray], size: int = SIZE) -> torch.Tensor:
    """uint8 masks (any size) -> (N, 1, size, size) in {-1, 1} (area-resized, rebinarised)."""
    x = torch.from_numpy(np.stack([(np.asarray(m) > 127) for m in masks])).float()[:, None]
    x = F.interpolate(x, size=(size, size), mode="area")
    return (x > 0.5).float() * 2 - 1


def train(
    unet: UNet2DModel,
    masks: list[np.ndarray],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    log: Callable[[int, float], None],
    rt: Runtime = CPU,
) -> None:
    """Denoising training on the masks (and their flips): MSE on the noise. The UNet
    trains on `rt.device` in float32 under `rt.autocast` (noise drawn on the CPU from
    `gen`, so a run reproduces across devices); sampling later runs where it lives."""
    size = unet.config.sample_size
    data = to_tensor(masks, size)
    data = torch.cat([data, data.flip(-1), data.flip(-2)])
    sched = DDPMScheduler(**SCHEDULE)
    unet.to(rt.device, torch.float32)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    with LossBuffer(log) as losses:
        for step in range(steps):
            x = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
            noise = torch.randn(x.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
            noisy = sched.add_noise(x, noise, t).to(rt.device)
            with rt.autocast:
                pred = unet(noisy, t.to(rt.device)).sample
            loss = F.mse_loss(pred.float(), noise.to(rt.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.add(step, loss)
    unet.eval()


def _binary(x: torch.Tensor, shape: tuple[int, int]) -> list[np.ndarray]:
    """(N, 1, s, s) model samples -> uint8 {0, 255} masks of `shape` (threshold 0, nearest)."""
    on = F.interpolate((x > 0).float(), size=shape, mode="nearest")[:, 0] > 0.5
    return [np.where(m, 255, 0).astype(np.uint8) for m in on.numpy()]


@torch.no_grad()
def _denoise(unet: UNet2DModel, x: torch.Tensor, steps: int) -> torch.Tensor:
    sched = DDIMScheduler(**SCHEDULE)
    sched.set_timesteps(steps)
    x = x.to(unet.device)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x.cpu()


@torch.no_grad()
def sample(
    unet: UNet2DModel, seeds: list[int], *, shape: tuple[int, int], sample_steps: int = 50
) -> list[np.ndarray]:
    """One mask per seed: DDIM from noise, binarised at 0, resized (nearest) to `shape`;
    uint8 {0, 255}."""
    size = unet.config.sample_size
    x = torch.stack(
        [torch.randn((1, size, size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    return _binary(_denoise(unet, x, sample_steps), shape)


@torch.no_grad()
def invert(unet: UNet2DModel, masks: list[np.ndarray], steps: int = 50) -> torch.Tensor:
    """DDIM inversion: the noises (N, 1, s, s) that DDIM sampling maps back to the masks."""
    inverse = DDIMInverseScheduler(**{**SCHEDULE, "clip_sample": False})
    inverse.set_timesteps(steps)
    x = to_tensor(masks, unet.config.sample_size).to(unet.device)
    for t in inverse.timesteps:
        x = inverse.step(unet(x, t).sample, t, x).prev_sample
    return x.cpu()


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two noises (linear when they are parallel)."""
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-6:
        return (1 - alpha) * z0 + alpha * z1
    w0, w1 = (
        torch.sin((1 - alpha) * theta) / torch.sin(theta),
        torch.sin(alpha * theta) / torch.sin(theta),
    )
    return (w0 * z0.double() + w1 * z1.double()).to(z0.dtype)


@torch.no_grad()
def interpolate_latent(
    unet: UNet2DModel, a: np.ndarray, b: np.ndarray, alphas: list[float], *, steps: int = 50
) -> list[np.ndarray]:
    """Masks between `a` and `b`: slerp of their DDIM-inverted noises at each alpha,
    sampled back with DDIM, binarised, at the masks' own size."""
    z0, z1 = invert(unet, [a, b], steps)
    x = torch.cat([slerp(z0, z1, alpha)[None] for alpha in alphas])
    return _binary(_denoise(unet, x, steps), a.shape)
