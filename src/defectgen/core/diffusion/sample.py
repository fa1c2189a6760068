"""Generation: image-oriented (img2img from a real train image of the class, StableSDG
section III-C) or from pure noise (txt2img, the ablation), in batches, one seed per image.

Each image has its own `torch.Generator`, so its pixels depend on its seed and parent
only, never on the batch it was generated in.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from defectgen.core.diffusion.train import from_pixels, to_pixels


def sampler(
    pipe: StableDiffusionPipeline, mode: str, *, ancestral: bool = False
) -> StableDiffusionPipeline:
    """The generation pipeline for `mode` sharing `pipe`'s modules, with a DDIM scheduler
    (or, with `ancestral`, DDPM's ancestral sampler: DreamBooth's prior images)."""
    components = dict(pipe.components)
    scheduler = DDPMScheduler if ancestral else DDIMScheduler
    components["scheduler"] = scheduler.from_config(pipe.scheduler.config)
    cls = StableDiffusionImg2ImgPipeline if mode == "img2img" else StableDiffusionPipeline
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
