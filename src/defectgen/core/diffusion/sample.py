"""Generation: image-oriented (img2img from a real train image of the class, StableSDG
section III-C) or from pure noise (txt2img, the ablation), in batches, one seed per image.

Each image has its own `torch.Generator`, so its pixels depend on its seed and parent
only, never on the batch it was generated in (up to the float rounding of batched
kernels).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils.torch_utils import randn_tensor

from defectgen.core.diffusion.loops import from_pixels, to_pixels


class BatchedImg2Img(StableDiffusionImg2ImgPipeline):
    """diffusers' img2img with the parents encoded in one VAE call.

    Why not the stock method: given one generator per image, diffusers encodes the batch
    one image per VAE call (to sample each posterior with its own generator); here the
    batch is encoded once and row i's posterior sample and noise still come from
    generator i, in diffusers' order (posterior, then noise), so the images are the
    stock pipeline's up to the rounding of a batched convolution."""

    def prepare_latents(
        self, image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None
    ):
        n = batch_size * num_images_per_prompt
        if not isinstance(generator, list) or len(generator) != n or len(image) != n:
            return super().prepare_latents(
                image, timestep, batch_size, num_images_per_prompt, dtype, device, generator
            )
        dist = self.vae.encode(image.to(device=device, dtype=dtype)).latent_dist
        row_shape = (1, *dist.mean.shape[1:])
        rows = [
            dist.mean[i : i + 1]
            + dist.std[i : i + 1]
            * randn_tensor(row_shape, generator=g, device=device, dtype=dist.mean.dtype)
            for i, g in enumerate(generator)
        ]
        init = self.vae.config.scaling_factor * torch.cat(rows)
        noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(init, noise, timestep)


def sampler(
    pipe: StableDiffusionPipeline, mode: str, *, ancestral: bool = False
) -> StableDiffusionPipeline:
    """The generation pipeline for `mode` sharing `pipe`'s modules, with a DDIM scheduler
    (or, with `ancestral`, DDPM's ancestral sampler: DreamBooth's prior images)."""
    components = dict(pipe.components)
    scheduler = DDPMScheduler if ancestral else DDIMScheduler
    components["scheduler"] = scheduler.from_config(pipe.scheduler.config)
    cls = BatchedImg2Img if mode == "img2img" else StableDiffusionPipeline
    out = cls(**components, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    *,
    prompt: str,
    seeds: list[int],
    parents: list[np.ndarray] | None,
    strength: float,
    guidance: float,
    steps: int,
    size: int,
    channels: int,
) -> list[np.ndarray]:
    """Generate one image per seed (img2img when `parents` is given, one per seed).

    Args:
        pipe: from `sampler`.
        parents: uint8 source images for img2img, or None for txt2img.
        size: output height and width in pixels.
        channels: 1 or 3, the dataset's colour.

    Returns:
        uint8 images (size, size) or (size, size, 3).
    """
    if parents is not None:
        # (B, 3, H, W) in [0, 1], the pipeline's image convention
        source = {"image": (to_pixels(parents) + 1) / 2, "strength": strength}
    else:
        source = {"height": size, "width": size}
    out = pipe(
        prompt=[prompt] * len(seeds),
        guidance_scale=guidance,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
        **source,
    ).images
    return from_pixels(out * 2 - 1, channels)  # (B, 3, H, W) in [0, 1] -> uint8


def in_batches(
    pipe: StableDiffusionPipeline,
    *,
    seeds: list[int],
    parents: list[np.ndarray] | None,
    batch_size: int,
    **kwargs,
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """`generate` over every seed in batches of at most `batch_size`, yielding (indices
    into `seeds`, images). The batch is sized to the device's memory: on a CUDA out-of-
    memory error it halves (said on stderr) and the same images are made again at the
    smaller size, so a batch sized for a large card still runs on a small one. An image
    depends on its seed and parent only, so the batch size never changes what it is
    (beyond the rounding of batched kernels)."""
    start, size = 0, batch_size
    while start < len(seeds):
        part = slice(start, start + size)
        try:
            images = generate(
                pipe,
                seeds=seeds[part],
                parents=None if parents is None else parents[part],
                **kwargs,
            )
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            torch.cuda.empty_cache()
            size //= 2
            print(f"generation: out of device memory; batch {size} from here", file=sys.stderr)
            continue
        yield list(range(start, start + len(images))), images
        start += len(images)
