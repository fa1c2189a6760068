"""The mask-conditioned generator: a diffusers ControlNet initialised from the base UNet
(`ControlNetModel.from_unet`: the UNet's encoder copied, zero-initialised output convs,
so training starts exactly at the base), trained on (conditioning image, prompt) ->
image pairs, and generation of image + mask pairs from new masks (DefFiller, Valvano
et al., DefectSynth stage 2).

With `backgrounds` (pairs.background normal / real) the defect is generated into a real
image instead of the whole image from noise: blended latent diffusion (Avrahami et al.
2023; DefectSynth's stage 2 from a normal image), through diffusers'
StableDiffusionControlNetInpaintPipeline, which with a 4-channel UNet does exactly that:
the background's latent noised to `strength`, and after every DDIM step the latents
outside the mask replaced by the background's own, noised to the next step. The mask it
gets is the annotation dilated by `dilate` px and grown to whole latent cells (so its
nearest-neighbour downsampling keeps every cell a thin stroke touches); the decoded image
is then composited onto the background with a feathered alpha, so every pixel further
than `band(dilate, feather)` px from the defect is the background's own.

The conditioning images come from core.masks (`coloured` or `topological_driver`), in
[0, 1], at the image size; the ControlNet's conditioning encoder downsamples them to
the latent size, so its depth follows the VAE's factor (SD1.5: 8x, 4 levels; the tiny
profile: 4x, 3 levels). Only the ControlNet trains; the base stays frozen.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from scipy import ndimage

from defectgen.core.device import LossBuffer
from defectgen.core.diffusion import defectsynth
from defectgen.core.diffusion.loops import (
    Draws,
    LatentCache,
    StepLogger,
    denoise_loss,
    from_pixels,
    noise_draw,
    optimizer,
    to_pixels,
)
from defectgen.core.diffusion.models import Runtime, latent_factor

EMBEDDING_CHANNELS = (16, 32, 96, 256)  # diffusers' default for SD's 8x factor
ANGLES = tuple(range(0, 360, 15))  # SAE's rotation search (Eq. 5), degrees


def build(pipe: StableDiffusionPipeline, seed: int = 0) -> ControlNetModel:
    """A ControlNet for `pipe`'s UNet, its conditioning encoder matched to the VAE factor.
    The layers `from_unet` does not copy (the conditioning encoder) are initialised from
    `seed`, leaving the global RNG as it was."""
    levels = int(math.log2(latent_factor(pipe.vae))) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(
            pipe.unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS[:levels]
        )
    return net.to(pipe.unet.device, torch.float32)  # trainable: float32 (models.Runtime)


def to_conditions(images: list[np.ndarray]) -> torch.Tensor:
    """Conditioning images (H, W, 3), float in [0, 1] or uint8 -> (N, 3, H, W) float."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    if arr.max() > 1.0:
        arr = arr / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def train(
    pipe: StableDiffusionPipeline,
    controlnet: ControlNetModel,
    latents: LatentCache,
    conditions: torch.Tensor,
    ids: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    rt: Runtime,
    log: StepLogger,
    chunk: int = 50,
) -> None:
    """The ControlNet training loop: image i's latent with condition i (same order as
    `latents`), train.denoise_loss through the frozen UNet with the ControlNet's residuals
    (so the target follows the base's prediction type, as in adaptation). Inputs go to
    the device once; each step's random numbers come from `train.Draws`."""
    if len(conditions) != len(latents):
        raise ValueError(f"{len(conditions)} conditions for {len(latents)} images")
    controlnet.float().train().requires_grad_(True)
    opt = optimizer(torch.optim.AdamW, controlnet.parameters(), lr, rt)
    with torch.no_grad(), rt.autocast:
        text = pipe.text_encoder(ids.to(rt.device))[0]  # one prompt, encoded once
    cond = text.expand(batch_size, -1, -1)
    cache, images = latents.to(rt.device), conditions.to(rt.device)
    shape = (batch_size, *latents.mean.shape[1:])

    def draw(g: torch.Generator) -> dict:  # rows (image and condition), noise, timesteps
        return {**latents.draw(batch_size, g), **noise_draw(noise_scheduler, shape, g)}

    with LossBuffer(log) as losses:
        for step, d in enumerate(Draws(draw, gen, rt, steps=steps, chunk=chunk)):
            image_cond = images[d["idx"]]

            def residuals(noisy, t, image_cond=image_cond):
                down, mid = controlnet(
                    noisy,
                    t,
                    encoder_hidden_states=cond,
                    controlnet_cond=image_cond,
                    return_dict=False,
                )
                return {
                    "down_block_additional_residuals": down,
                    "mid_block_additional_residual": mid,
                }

            # residuals run inside denoise_loss's autocast, with the UNet
            z = cache.latents(d["idx"], d["eps"])
            loss = denoise_loss(
                pipe.unet, noise_scheduler, z, d["noise"], d["t"], cond, rt, residuals=residuals
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.add(step, loss)
    controlnet.eval().requires_grad_(False)


def sampler(pipe: StableDiffusionPipeline, controlnet: ControlNetModel, *, blend: bool = False):
    """The ControlNet generation pipeline sharing `pipe`'s modules, with DDIM (`blend`:
    the inpainting one, for `generate_pairs(backgrounds=...)`). The trained (float32)
    ControlNet is cast to the base's dtype: frozen from here on, and diffusers' pipeline
    feeds it latents in the UNet's dtype."""
    controlnet.to(pipe.unet.dtype)
    components = dict(pipe.components)
    components["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config)
    kind = StableDiffusionControlNetInpaintPipeline if blend else StableDiffusionControlNetPipeline
    out = kind(**components, controlnet=controlnet, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


@dataclass(frozen=True)
class Backgrounds:
    """Real images to generate the defects into, one per mask (uint8, the masks' size)."""

    images: list[np.ndarray]
    strength: float
    dilate: int
    feather: float


def band(dilate: int, feather: float) -> int:
    """How far from the mask (px) a blended pair's pixels may differ from its background:
    the dilation plus the Gaussian's support (scipy truncates it at 4 sigma)."""
    return dilate + (int(4 * feather + 0.5) if feather > 0 else 0)


def edit_region(mask: np.ndarray, dilate: int, feather: float, factor: int):
    """(the mask the inpainting pipeline gets: the dilated mask grown to whole latent
    cells of `factor` px, float {0, 1}; the composite's alpha: 1 on the dilated mask,
    falling to exactly 0 `band` px from the mask)."""
    on = mask > 127
    grown = ndimage.binary_dilation(on, iterations=dilate) if dilate and on.any() else on
    h, w = grown.shape
    cells = grown.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
    latent = np.kron(cells, np.ones((factor, factor), bool)).astype(np.float32)
    alpha = grown.astype(np.float32)
    if feather > 0:
        alpha = ndimage.gaussian_filter(alpha, feather)
        alpha = np.maximum(alpha / max(float(alpha.max()), 1e-6), grown)
    return latent, alpha


@torch.no_grad()
def _sae_inputs(
    pipe, references: list[tuple[np.ndarray, np.ndarray]], masks: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAE's per-image inputs: the real latents aligned onto the generated masks (Eq. 5-6)
    and the generated masks at the latent size."""
    vae = pipe.vae
    pixels = to_pixels([image for image, _ in references]).to(vae.device, vae.dtype)
    z_real = vae.encode(pixels).latent_dist.mean.float().cpu() * vae.config.scaling_factor
    shape = tuple(z_real.shape[-2:])
    m_gen = torch.stack([defectsynth.latent_mask(m, shape) for m in masks])
    aligned = [
        defectsynth.aligned_reference(z, defectsynth.latent_mask(m_real, shape), m, ANGLES)
        for z, (_, m_real), m in zip(z_real, references, m_gen, strict=True)
    ]
    return torch.stack(aligned), m_gen


@torch.no_grad()
def generate_pairs(
    control_pipe,
    *,
    prompt: str,
    masks: list[np.ndarray],
    conditions: list[np.ndarray],
    seeds: list[int],
    guidance: float,
    steps: int,
    channels: int,
    scale: float = 1.0,
    sae: list[tuple[np.ndarray, np.ndarray]] | None = None,
    sff: tuple[float, float] | None = None,
    backgrounds: Backgrounds | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (image, mask) pair per mask: the image generated under the mask's conditioning
    image, the mask itself as its pixel-exact annotation (the self-annotation of the
    papers: the mask is the input, not a prediction).

    Args:
        sae: DefectSynth's SAE, with one real train (image, mask) reference per mask.
        sff: DefectSynth's SFF over this batch's final latents: (rate, base_weight).
        backgrounds: generate each defect into its background (blended latent diffusion;
            `control_pipe` from `sampler(..., blend=True)`); the returned image equals
            the background further than `band` px from the mask.
    """
    if not len(masks) == len(conditions) == len(seeds):
        raise ValueError("one conditioning image and one seed per mask")
    if sae is not None and len(sae) != len(masks):
        raise ValueError("one SAE reference per mask")
    if backgrounds is not None and len(backgrounds.images) != len(masks):
        raise ValueError("one background per mask")
    h, w = masks[0].shape
    call = {
        "prompt": [prompt] * len(masks),
        "height": h,
        "width": w,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "controlnet_conditioning_scale": scale,
        "generator": [torch.Generator().manual_seed(s) for s in seeds],
        "output_type": "latent",
    }
    if backgrounds is None:
        call["image"] = to_conditions(conditions)
    else:
        factor = latent_factor(control_pipe.vae)
        regions = [edit_region(m, backgrounds.dilate, backgrounds.feather, factor) for m in masks]
        call["image"] = (to_pixels(backgrounds.images) + 1) / 2  # the pipeline takes [0, 1]
        call["mask_image"] = torch.from_numpy(np.stack([r[0] for r in regions]))[:, None]
        call["control_image"] = to_conditions(conditions)
        call["strength"] = backgrounds.strength
    with ExitStack() as stack:
        if sae is not None:
            references, latent_masks = _sae_inputs(control_pipe, sae, masks)
            stack.enter_context(defectsynth.enhanced(control_pipe.unet, references, latent_masks))
        latents = control_pipe(**call).images
    if sff is not None:
        rate, base_weight = sff
        gen = torch.Generator().manual_seed(seeds[0])
        latents = defectsynth.fuse(latents, rate=rate, base_weight=base_weight, gen=gen)
    vae = control_pipe.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    generated = from_pixels(images, channels)
    if backgrounds is not None:
        generated = [
            _composite(g, bg, alpha)
            for g, bg, (_, alpha) in zip(generated, backgrounds.images, regions, strict=True)
        ]
    return list(zip(generated, [np.asarray(m).copy() for m in masks], strict=True))


def _composite(generated: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if background.ndim == 3:
        alpha = alpha[..., None]
    out = alpha * generated.astype(np.float32) + (1 - alpha) * background.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
