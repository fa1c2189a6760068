"""StableSDG adaptation (Algorithm 1) and its Table II ablations.

Stage 1, textual inversion: one new token per class; only its embedding row trains,
as a float32 parameter of its own spliced into the embedding's output (the table
itself never changes until the trained row is written into it).
Stage 2, LoRA (peft): rank r (default 1), Gaussian A, zero B, on the attention
projections of the UNet and the CLIP text encoder, with the learned token frozen.
Ablation: `full_attn` trains those attention projections' full weights instead.
DreamBooth (Valvano et al. section 4.1): LoRA or the full UNet, trained with the
class-specific prior-preservation loss on images the base generated itself (`Prior`).

Adapters are saved in diffusers' formats, so a fresh pipeline loads them with
`load_textual_inversion` and `load_lora_weights` (see `load_adapter`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from defectgen.core.device import LossBuffer
from defectgen.core.diffusion import loops
from defectgen.core.diffusion.loops import LatentCache, StepLogger, denoise_loss
from defectgen.core.diffusion.models import Runtime
from defectgen.errors import ConfigError

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
EMBEDS_NAME = "learned_embeds.safetensors"
LORA_NAME = "pytorch_lora_weights.safetensors"
ATTENTION_NAME = "attention_weights.safetensors"
UNET_NAME = "unet_weights.safetensors"


def add_token(pipe: StableDiffusionPipeline, token: str, initializer: str | None) -> int:
    """Add `token` to the tokenizer and an embedding row for it; returns its id.

    The row starts as the embedding of `initializer` (a word that is one token), or,
    with None, as the mean of all embeddings: StableSDG's "<unknown>" start (Table III).
    """
    tok, te = pipe.tokenizer, pipe.text_encoder
    if tok.add_tokens(token) != 1:
        raise ConfigError(
            f"token {token!r} is already in the tokenizer's vocabulary; choose another "
            "finetune.token_template"
        )
    token_id = tok.convert_tokens_to_ids(token)
    te.resize_token_embeddings(len(tok), mean_resizing=False)  # the row is set below
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        if initializer is None:
            emb[token_id] = emb[:token_id].mean(0)
        else:
            ids = tok.encode(initializer, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(
                    f"finetune.initializer = {initializer!r} is {len(ids)} tokens; it must be a "
                    "word the CLIP tokenizer keeps whole (e.g. 'defect'), or null"
                )
            emb[token_id] = emb[ids[0]]
    return token_id


@dataclass
class Prior:
    """DreamBooth's class-specific prior preservation: the base's own images of the class
    noun (`latents`), their prompt `ids` (1, 77), and the loss weight lambda."""

    ids: torch.Tensor
    latents: LatentCache
    weight: float


def train(
    pipe: StableDiffusionPipeline,
    parameters: list[torch.nn.Parameter],
    ids: torch.Tensor,
    latents: LatentCache,
    noise_scheduler: DDPMScheduler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    rt: Runtime,
    log: StepLogger,
    prior: Prior | None = None,
    chunk: int = 50,
) -> None:
    """The adaptation loop shared by every stage: Adam on `parameters`, MSE noise loss,
    the prompt `ids` (1, 77) encoded by the (possibly adapted) text encoder each step.

    With `prior`, each step adds weight x the same loss on a batch of prior images under
    the prior prompt (DreamBooth's L = L_instance + lambda L_prior). Inputs go to the
    device once and each step's random numbers come from `train.Draws` (no host copy
    or sync inside the loop)."""
    opt = loops.optimizer(torch.optim.Adam, parameters, lr, rt)
    terms = [("", ids, latents)] + ([("prior.", prior.ids, prior.latents)] if prior else [])
    on_device = {
        prefix: (prompt.to(rt.device), cache.to(rt.device)) for prefix, prompt, cache in terms
    }

    def draw(g: torch.Generator) -> dict:  # per term: latents, then noise and timesteps
        out: dict = {}
        for prefix, _, cache in terms:
            out |= cache.draw(batch_size, g, prefix)
            shape = (batch_size, *cache.mean.shape[1:])
            out |= loops.noise_draw(noise_scheduler, shape, g, prefix)
        return out

    def loss_on(prefix: str, d: dict) -> torch.Tensor:
        prompt, cache = on_device[prefix]
        z = cache.latents(d[prefix + "idx"], d[prefix + "eps"])
        with rt.autocast:
            # one prompt: encode it once, not once per batch row (same values and grads)
            cond = pipe.text_encoder(prompt)[0].expand(len(z), -1, -1)
        noise, t = d[prefix + "noise"], d[prefix + "t"]
        return denoise_loss(pipe.unet, noise_scheduler, z, noise, t, cond, rt)

    with LossBuffer(log) as losses:
        for step, d in enumerate(loops.Draws(draw, gen, rt, steps=steps, chunk=chunk)):
            loss = loss_on("", d)
            if prior is not None:
                loss = loss + prior.weight * loss_on("prior.", d)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.add(step, loss)


def token_parameters(pipe: StableDiffusionPipeline, token_id: int):
    """The new token's embedding row as the only trainable parameter, and `commit`.

    The row is a float32 parameter of its own (D values, not the 49,408 x D table:
    no dense gradient or Adam state for the table, and no bf16 rounding of a small
    update), spliced into the embedding's output wherever `token_id` occurs by a
    forward hook. `commit()` writes the trained row into the table (in the table's
    dtype) and removes the hook; until then the table is untouched.
    """
    module = pipe.text_encoder.get_input_embeddings()
    row = torch.nn.Parameter(module.weight[token_id].detach().float().clone())

    def splice(_module, inputs, out):  # out: (B, L, D) embeddings of ids (B, L)
        hit = (inputs[0] == token_id)[..., None]
        return torch.where(hit, row.to(out.dtype), out)

    handle = module.register_forward_hook(splice)

    def commit() -> None:
        handle.remove()
        with torch.no_grad():
            module.weight[token_id] = row.detach().to(module.weight.dtype)
        row.requires_grad_(False)

    return [row], commit


def add_lora(
    pipe: StableDiffusionPipeline, rank: int, alpha: float | None, *, seed: int
) -> list[torch.nn.Parameter]:
    """Inject LoRA (peft) into the attention projections of the UNet and the text encoder.

    A is Gaussian and B zero (peft's "gaussian" init), so the adapted model starts
    exactly at the base. LoRA weights train in float32 whatever the base dtype.
    peft draws A from torch's global RNG (it takes no generator), so the draw runs
    under a forked RNG seeded with `seed`: reproducible, and the caller's state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module, targets in ((pipe.unet, UNET_ATTENTION), (pipe.text_encoder, TEXT_ATTENTION)):
            module.add_adapter(
                LoraConfig(
                    r=rank,
                    lora_alpha=alpha or rank,
                    init_lora_weights="gaussian",
                    target_modules=list(targets),
                )
            )
    params = [
        p for m in (pipe.unet, pipe.text_encoder) for n, p in m.named_parameters() if "lora_" in n
    ]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def attention_modules(pipe: StableDiffusionPipeline) -> Iterable[tuple[str, torch.nn.Module]]:
    for prefix, module, targets in (
        ("unet", pipe.unet, UNET_ATTENTION),
        ("text_encoder", pipe.text_encoder, TEXT_ATTENTION),
    ):
        for name, sub in module.named_modules():
            if any(name == t or name.endswith("." + t) for t in targets):
                yield f"{prefix}.{name}", sub


def attention_parameters(pipe: StableDiffusionPipeline) -> list[torch.nn.Parameter]:
    """Every weight and bias of the attention projections (the full-adaptation ablation)."""
    params = [p for _, m in attention_modules(pipe) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def unet_parameters(pipe: StableDiffusionPipeline) -> list[torch.nn.Parameter]:
    """Every UNet weight (DreamBooth's full fine-tune), in float32 whatever the base dtype
    (Adam updates of a few 1e-6 vanish in bf16); autocast keeps the forward in rt.dtype."""
    params = list(pipe.unet.parameters())
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def _lora_state(module: torch.nn.Module, **kwargs) -> dict[str, torch.Tensor]:
    """The module's LoRA weights in diffusers' key format, with the scale alpha / r folded
    into B, so the file means the same under any loader's default alpha (= r).

    Why fold instead of storing alpha: diffusers keeps alpha in the safetensors header
    metadata, whose key order is not stable, and identical adapters must be identical
    files (DVC hashes them; the adapter id is their digest).
    """
    cfg = module.peft_config["default"]
    scale = cfg.lora_alpha / cfg.r
    state = get_peft_model_state_dict(module, **kwargs)
    state = {k: v * scale if "lora_B" in k else v for k, v in state.items()}
    return convert_state_dict_to_diffusers(state)


def save_adapter(
    pipe: StableDiffusionPipeline,
    out_dir: Path,
    *,
    token: str,
    token_id: int,
    lora: bool,
    attention: bool,
    unet: bool = False,
) -> list[str]:
    """Write the adapter files into `out_dir`; returns their names.

    - learned_embeds.safetensors: {token: (D,) embedding}, diffusers' textual-inversion format;
    - pytorch_lora_weights.safetensors: UNet + text-encoder LoRA in diffusers' key format
      (the resized embedding is left out, or `load_lora_weights` refuses the file);
    - attention_weights.safetensors: the full_attn ablation's trained projections;
    - unet_weights.safetensors: DreamBooth's fully fine-tuned UNet (every weight).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    emb = pipe.text_encoder.get_input_embeddings().weight
    save_file({token: emb[token_id].detach().float().cpu().contiguous()}, out_dir / EMBEDS_NAME)
    files = [EMBEDS_NAME]
    if lora:
        StableDiffusionPipeline.save_lora_weights(
            out_dir,
            unet_lora_layers=_lora_state(pipe.unet),
            # the resized embedding stays out, or load_lora_weights refuses the file
            text_encoder_lora_layers=_lora_state(pipe.text_encoder, save_embedding_layers=False),
            weight_name=LORA_NAME,
        )
        files.append(LORA_NAME)
    if attention:
        tensors = {
            f"{name}.{pname}": p.detach().float().cpu().contiguous()
            for name, m in attention_modules(pipe)
            for pname, p in m.named_parameters()
        }
        save_file(tensors, out_dir / ATTENTION_NAME)
        files.append(ATTENTION_NAME)
    if unet:
        tensors = {k: v.detach().cpu().contiguous() for k, v in pipe.unet.state_dict().items()}
        save_file(tensors, out_dir / UNET_NAME)
        files.append(UNET_NAME)
    return files


def load_adapter(pipe: StableDiffusionPipeline, adapter_dir: Path, token: str) -> None:
    """Load a saved adapter into a fresh pipeline with diffusers' own loaders."""
    adapter_dir = Path(adapter_dir)
    pipe.load_textual_inversion(str(adapter_dir / EMBEDS_NAME), token=token)
    if (adapter_dir / LORA_NAME).is_file():
        pipe.load_lora_weights(str(adapter_dir), weight_name=LORA_NAME)
    if (adapter_dir / ATTENTION_NAME).is_file():
        tensors = load_file(str(adapter_dir / ATTENTION_NAME))
        modules = dict(attention_modules(pipe))
        with torch.no_grad():
            for key, value in tensors.items():
                name, pname = key.rsplit(".", 1)
                param = getattr(modules[name], pname)
                param.copy_(value.to(param.device, param.dtype))
    if (adapter_dir / UNET_NAME).is_file():
        state = load_file(str(adapter_dir / UNET_NAME))
        dtype = next(pipe.unet.parameters()).dtype  # the pipeline's dtype, not the file's
        pipe.unet.load_state_dict({k: v.to(dtype) for k, v in state.items()})
