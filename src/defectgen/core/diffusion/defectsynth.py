"""DefectSynth's two generation-time modules (III-D and III-E), both optional.

SAE, Selective Attention Enhancement (Eq. 5-8, Algorithm 1). Per generated image a real
train image and its mask are taken (latent z_r, mask M_r at the latent size); once,
before denoising, M_r is rotated and shifted onto the generated image's mask M_g for the
largest overlap (Eq. 5, an exhaustive search: every angle in `angles`, every integer
shift by FFT cross-correlation) and z_r moved the same way (Eq. 6). At every denoising
step the UNet's input z_t gives the weight map

    w_m = ||M_g||_1 * softmax(mean_c((M_g * (z'_r - z_t))^2)) + 1        (Eq. 7)

(the softmax over all latent positions), and every cross-attention of the UNet
multiplies its attention probabilities by w_m at the query's position (Eq. 8):
RW-Atten(Q, K, V) = w_m * softmax(QK^T / sqrt(d)) V, w_m resized to each level's grid.
It is a diffusers attention processor installed on the `attn2` modules only for the
duration of `enhanced(...)`.

SFF, Similarity-based Feature Fusion (Eq. 9). After denoising, for each latent b_i of the
batch in turn: rate x H x W random positions of b_i, for each the most similar position
(dot product) in every other latent, fused as w_i * f + sum_j w_j * r_j and written
back. The weights here: `base_weight` for b_i, the rest shared equally by the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F


def latent_mask(mask: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (>127 is defect) at the latent size: a cell is defect when any of its
    pixels is (max-pooling, so thin strokes survive). float32 (h, w) of 0/1."""
    on = torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    return F.adaptive_max_pool2d(on, shape)[0, 0]


def warp(x: torch.Tensor, angle: float, shift: tuple[int, int], mode: str) -> torch.Tensor:
    """`x` (C, h, w) rotated by `angle` degrees about its centre, then shifted by
    (dy, dx) cells; what comes from outside is zero."""
    _, h, w = x.shape
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # inverse map: output cell -> source cell (undo the shift, then the rotation)
    oy, ox = ys - shift[0] - cy, xs - shift[1] - cx
    sy, sx = cos * oy + sin * ox + cy, -sin * oy + cos * ox + cx
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None]
    out = F.grid_sample(
        x[None].float(), grid.to(x.device), mode=mode, padding_mode="zeros", align_corners=False
    )
    return out[0].to(x.dtype)


def align(
    real: torch.Tensor, generated: torch.Tensor, angles: Sequence[float]
) -> tuple[float, tuple[int, int], float]:
    """Eq. 5: the rotation (one of `angles`, degrees) and integer shift of the real mask
    with the largest overlap with the generated one: (angle, (dy, dx), overlap)."""
    h, w = generated.shape
    size = (2 * h, 2 * w)  # zero padding: linear, not circular, correlation
    spectrum = torch.fft.rfft2(generated.float(), s=size)
    best = (0.0, (0, 0), -1.0)
    for angle in angles:
        rotated = (warp(real[None].float(), angle, (0, 0), "nearest")[0] > 0.5).float()
        corr = torch.fft.irfft2(spectrum * torch.conj(torch.fft.rfft2(rotated, s=size)), s=size)
        k = int(torch.argmax(corr))
        dy, dx = divmod(k, size[1])
        overlap = float(corr.flatten()[k])
        if overlap > best[2] + 1e-4:
            shift = (dy - size[0] if dy >= h else dy, dx - size[1] if dx >= w else dx)
            best = (float(angle), shift, overlap)
    return best


def aligned_reference(
    z_real: torch.Tensor, m_real: torch.Tensor, m_gen: torch.Tensor, angles: Sequence[float]
) -> torch.Tensor:
    """Eq. 6: the real latent (C, h, w) moved so its defect lies on the generated mask."""
    angle, shift, _ = align(m_real, m_gen, angles)
    return warp(z_real, angle, shift, "bilinear")


def weight_map(z_t: torch.Tensor, z_ref: torch.Tensor, m_gen: torch.Tensor) -> torch.Tensor:
    """Eq. 7 for a batch: z_t, z_ref (B, C, h, w), m_gen (B, h, w) -> w_m (B, h, w)."""
    err = ((m_gen[:, None] * (z_ref - z_t)) ** 2).mean(dim=1)
    soft = torch.softmax(err.flatten(1).float(), dim=1).view_as(err)
    return m_gen.sum(dim=(1, 2))[:, None, None] * soft + 1


def _grid_of(seq: int, h: int, w: int) -> tuple[int, int]:
    """The (rows, cols) of a UNet level with `seq` positions over an (h, w) latent."""
    f = 1
    while math.ceil(h / f) * math.ceil(w / f) > seq:
        f *= 2
    rows, cols = math.ceil(h / f), math.ceil(w / f)
    if rows * cols != seq:
        raise ValueError(f"{seq} query positions do not tile a {h}x{w} latent")
    return rows, cols


class SelectiveAttention:
    """Eq. 8 as a diffusers attention processor for cross-attention (`attn2`) modules:
    attention probabilities times the current weight map at each query position."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None  # (B, h, w), set per UNet call

    def _weights(self, batch: int, seq: int) -> torch.Tensor:
        wm = self.weights
        if wm is None:
            raise RuntimeError("SelectiveAttention used outside `enhanced(...)`")
        rows, cols = _grid_of(seq, *wm.shape[1:])
        if (rows, cols) != tuple(wm.shape[1:]):
            wm = F.interpolate(wm[:, None], size=(rows, cols), mode="area")[:, 0]
        if batch % len(wm):
            raise ValueError(f"a batch of {batch} for weight maps of {len(wm)} images")
        return wm.repeat(batch // len(wm), 1, 1).flatten(1)  # classifier-free guidance: 2B

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        if encoder_hidden_states is None:
            raise ValueError("SelectiveAttention is for cross-attention (attn2) modules only")
        residual = hidden_states
        batch, seq, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(
            attention_mask, encoder_hidden_states.shape[1], batch
        )
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, seq, tokens)
        wm = self._weights(batch, seq).repeat_interleave(attn.heads, dim=0)  # b * heads + h
        out = torch.bmm(probs * wm[..., None].to(probs.dtype), value)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def enhanced(unet, references: torch.Tensor, masks: torch.Tensor) -> Iterator[None]:
    """SAE on `unet` inside the block: `references` (B, C, h, w) the aligned real latents
    z'_r, `masks` (B, h, w) the generated masks M_g at the latent size, for a batch of B
    images (the UNet may see them twice, for classifier-free guidance)."""
    processor = SelectiveAttention()

    def before(module, args, kwargs):
        z_t = args[0] if args else kwargs["sample"]
        k = len(z_t) // len(references)
        processor.weights = weight_map(
            z_t.float(),
            references.repeat(k, 1, 1, 1).to(z_t.device),
            masks.repeat(k, 1, 1).to(z_t.device),
        )

    original = unet.attn_processors
    unet.set_attn_processor(
        {name: processor if name.endswith("attn2.processor") else p for name, p in original.items()}
    )
    hook = unet.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()
        unet.set_attn_processor(original)


def fuse(
    latents: torch.Tensor, *, rate: float, base_weight: float, gen: torch.Generator
) -> torch.Tensor:
    """SFF (Eq. 9) over a batch of final latents (B, C, h, w); returns a new tensor.
    Each latent in turn takes the fused features, so later ones see earlier updates (the
    paper's iteration). A batch of one is returned unchanged."""
    out = latents.detach().clone()
    b, c, h, w = out.shape
    if b < 2:
        return out
    n = max(1, round(rate * h * w))
    ref_weight = (1.0 - base_weight) / (b - 1)
    flat = out.view(b, c, h * w)
    for i in range(b):
        idx = torch.randperm(h * w, generator=gen)[:n].to(out.device)
        selected = flat[i][:, idx]  # (C, n)
        fused = base_weight * selected
        for j in range(b):
            if j != i:
                best = (selected.T @ flat[j]).argmax(dim=1)  # most similar position in r_j
                fused = fused + ref_weight * flat[j][:, best]
        flat[i][:, idx] = fused
    return out
