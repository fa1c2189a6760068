"""Base models: the tiny profile built from config, or a Stable Diffusion 1.x checkpoint.

Both profiles end as the same diffusers `StableDiffusionPipeline` (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, a DDPM-family scheduler); everything after
construction (pretraining aside) is one code path. The tiny base, once pretrained, is
saved in SD1.5's on-disk layout and reloaded by the very loader that reads SD1.5.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel

from defectgen.config import ModelConfig, TinyArchConfig
from defectgen.core.device import Runtime, runtime  # noqa: F401  (re-exported)
from defectgen.core.diffusion.tokenizer import build_tokenizer
from defectgen.errors import ConfigError

# SD1.x's noise schedule: the tiny profile uses it too, so schedules never differ by profile.
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def latent_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1) (8 for SD1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_tiny_pipeline(
    arch: TinyArchConfig, *, image_size: int, work_dir: Path, seed: int
) -> StableDiffusionPipeline:
    """A randomly initialised SD-architecture pipeline at toy size (no download).

    Args:
        arch: the widths and depths (params model.tiny).
        image_size: the training resolution in pixels.
        work_dir: scratch folder for the tokenizer files.
        seed: weight initialisation seed.
    """
    torch.manual_seed(seed)  # diffusers/transformers initialise weights from the global RNG
    vae_blocks = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        block_out_channels=tuple(arch.vae_channels),
        latent_channels=arch.latent_channels,
        norm_num_groups=8,
        sample_size=image_size,
    )
    factor = 2 ** (vae_blocks - 1)
    if image_size % (factor * 2 ** (len(arch.unet_channels) - 1)):
        raise ConfigError(
            f"preprocess.image_size = {image_size} must be divisible by the tiny model's total "
            f"downsampling ({factor} in the VAE x {2 ** (len(arch.unet_channels) - 1)} in the UNet)"
        )
    n = len(arch.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=image_size // factor,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=tuple(arch.unet_channels),
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=8,
    )
    tokenizer = build_tokenizer(Path(work_dir) / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=arch.text_hidden,
            intermediate_size=4 * arch.text_hidden,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def quiet() -> None:
    """Silence diffusers' and transformers' progress bars and advisory warnings (stage logs
    stay readable); errors still raise."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(
    source: str | Path, *, revision: str | None, rt: Runtime
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion 1.x checkpoint (a local diffusers folder or a hub id).

    The frozen base is put on `rt.device` in `rt.dtype`; SDPA attention is diffusers'
    default on torch 2. Raises ConfigError, saying what to download, when it cannot load.
    """
    source = str(source)
    local = Path(source).expanduser()
    kwargs = dict(
        revision=revision, dtype=rt.dtype, safety_checker=None, requires_safety_checker=False
    )
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ConfigError(
                f"model.base = {source}: this folder is not a diffusers checkpoint (no "
                "model_index.json); point it at the folder that holds model_index.json, unet/, "
                "vae/, text_encoder/, tokenizer/ and scheduler/"
            )
        pipe = StableDiffusionPipeline.from_pretrained(str(local), **kwargs)
    else:
        try:
            pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"model.base = {source!r} is not a local folder and could not be loaded from the "
                f"Hugging Face Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "Without network, download it on a machine that has it, e.g. "
                f"`huggingface-cli download {source} --local-dir /models/sd15`, copy the folder "
                "here and set model.base to that folder"
            ) from None
    return pipe.to(rt.device)


@contextlib.contextmanager
def channels_last(*modules: torch.nn.Module) -> Iterator[None]:
    """The modules' conv weights in NHWC while inside: oneDNN (CPU) and cuDNN run
    convolutions faster in it (benchmarks/results/cpu_pipeline.md); the default layout
    is restored on exit, because safetensors saves contiguous tensors only."""
    for module in modules:
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


def compile_mode(cfg: ModelConfig, device: torch.device) -> str | None:
    """model.compile resolved for `device`: a torch.compile mode, or None for eager."""
    if cfg.compile == "auto":
        return "default" if device.type == "cuda" else None
    return None if cfg.compile == "off" else cfg.compile


def prepare(pipe: StableDiffusionPipeline, cfg: ModelConfig) -> StableDiffusionPipeline:
    """Freeze the base and apply runtime options before adaptation: PyTorch's fused
    scaled-dot-product attention (flash / memory-efficient kernels on CUDA), NHWC conv
    weights (a prepared base is never saved, only its adapters), optionally gradient
    checkpointing, and `model.compile`.

    Compilation is in place (`nn.Module.compile`: state-dict keys, peft and the diffusers
    loaders see the module unchanged) and traced at the first call, so adapters added
    afterwards are in the graph. Dynamo keeps one cache per process: a second class's
    fresh copy of the same modules reuses the compiled code instead of compiling again."""
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
        module.eval()
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet.to(memory_format=torch.channels_last)
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.text_encoder.gradient_checkpointing_enable()
    mode = compile_mode(cfg, pipe.unet.device)
    if mode is not None:
        pipe.unet.compile(mode=mode)
        pipe.text_encoder.compile(mode=mode)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def for_sampling(pipe: StableDiffusionPipeline, cfg: ModelConfig) -> StableDiffusionPipeline:
    """A pipeline with its adapter loaded, made ready to sample (never to train or save):
    a LoRA is fused into the weights it adapts and its layers removed (sampling then runs
    plain attention projections, no per-layer adapter branch); with `model.fuse_qkv`,
    the attention's q/k/v projections become one matmul (UNet and VAE); with
    `model.compile`, the VAE decoder is compiled too (the UNet already is)."""
    if any("lora_" in name for name, _ in pipe.unet.named_parameters()):
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    if cfg.fuse_qkv:
        pipe.fuse_qkv_projections()
    mode = compile_mode(cfg, pipe.unet.device)
    if mode is not None:
        pipe.vae.decoder.compile(mode=mode)
    return pipe


def training_scheduler(pipe: StableDiffusionPipeline) -> DDPMScheduler:
    """The DDPM noise schedule the base was trained with (read from its scheduler config)."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def fingerprint(pipe: StableDiffusionPipeline) -> str:
    """sha256 over every weight of the UNet, VAE and text encoder: the base's identity,
    whatever it was loaded from (also how tests prove adaptation left the base unchanged)."""
    digest = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder"):
        for key, tensor in sorted(getattr(pipe, name).state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            # row-major bytes whatever the layout (a prepared base's convs are NHWC)
            flat = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
