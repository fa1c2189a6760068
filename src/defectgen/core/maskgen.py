"""DefFiller's mask producer (seed 002, 4.4.1): a DDPM trained from scratch on a class's
real masks at 64x64, sampled, binarised and resized to the image size.

The paper trains 200 epochs at batch 32, lr 1e-4; the schedule here is the caller's
(`steps`), so the CPU demo can run a short one. Training sees the masks and their
horizontal and vertical flips (a defect's mirror image is as plausible as the defect).
Sampling uses DDIM on the same noise schedule (`sample_steps`, 50 by default), one
`torch.Generator` per mask, so each mask depends on its seed only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from defectgen._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before diffusers imports transformers -> torchvision

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

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
) -> None:
    """Denoising training on the masks (and their flips): MSE on the noise."""
    size = unet.config.sample_size
    data = to_tensor(masks, size)
    data = torch.cat([data, data.flip(-1), data.flip(-2)])
    sched = DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    for step in range(steps):
        x = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        loss = F.mse_loss(unet(sched.add_noise(x, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log(step, loss.item())
    unet.eval()


@torch.no_grad()
def sample(
    unet: UNet2DModel, seeds: list[int], *, shape: tuple[int, int], sample_steps: int = 50
) -> list[np.ndarray]:
    """One mask per seed: DDIM from noise, binarised at 0, resized (nearest) to `shape`;
    uint8 {0, 255}."""
    size = unet.config.sample_size
    sched = DDIMScheduler(**SCHEDULE)
    sched.set_timesteps(sample_steps)
    x = torch.stack(
        [torch.randn((1, size, size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    on = (x > 0).float()
    on = F.interpolate(on, size=shape, mode="nearest")[:, 0] > 0.5
    return [np.where(m, 255, 0).astype(np.uint8) for m in on.numpy()]
