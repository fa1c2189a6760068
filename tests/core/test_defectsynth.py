"""DefectSynth's SAE (Eq. 5-8) and SFF (Eq. 9) on constructed tensors and the tiny UNet."""

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from defectgen.config import ModelConfig, TinyArchConfig
from defectgen.core.diffusion import defectsynth, models


def _ell(h: int = 12) -> torch.Tensor:
    m = torch.zeros(h, h)
    m[2:8, 3] = 1  # an L: asymmetric, so only one rotation fits
    m[7, 3:6] = 1
    return m


def test_align_recovers_the_rotation_and_shift_that_made_the_mask():
    real = _ell()
    moved = defectsynth.warp(real[None], 90.0, (2, -1), "nearest")[0]
    assert moved.sum() == real.sum()  # nothing left the grid
    angle, shift, overlap = defectsynth.align(real, moved, angles=range(0, 360, 15))
    assert (angle, shift) == (90.0, (2, -1))
    assert overlap == pytest.approx(float(real.sum()))  # a perfect fit
    # Eq. 6 moves the latent with the mask
    z = torch.randn(4, 12, 12) * real
    aligned = defectsynth.aligned_reference(z, real, moved, range(0, 360, 15))
    expected = defectsynth.warp(z, 90.0, (2, -1), "bilinear")
    assert torch.allclose(aligned, expected)
    assert torch.allclose(aligned.abs().sum(0) > 0, moved > 0)


def test_latent_mask_keeps_thin_strokes():
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 13] = 255  # one pixel wide
    small = defectsynth.latent_mask(mask, (8, 8))
    assert small.shape == (8, 8) and small[:, 3].eq(1).all() and small.sum() == 8


def test_weight_map_matches_equation_7_by_hand():
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # ||M||_1 = 2
    z_t = torch.zeros(1, 2, 2, 2)
    z_ref = torch.zeros(1, 2, 2, 2)
    z_ref[0, :, 0, 0] = 2.0  # channel mean of the squared difference: 4 at (0, 0)
    z_ref[0, 0, 1, 0] = 5.0  # outside the mask: ignored
    w = defectsynth.weight_map(z_t, z_ref, m)
    denom = math.exp(4) + 3
    expected = torch.tensor([[[2 * math.exp(4) / denom + 1, 2 / denom + 1],
                              [2 / denom + 1, 2 / denom + 1]]])  # fmt: skip
    assert torch.allclose(w, expected)


def _attention() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)


def test_selective_attention_is_plain_attention_at_weight_one_and_scales_before_out():
    attn = _attention()
    x, text = torch.randn(2, 16, 8), torch.randn(2, 5, 6)
    plain = AttnProcessor()(attn, x, text)
    sae = defectsynth.SelectiveAttention()
    sae.weights = torch.ones(2, 4, 4)
    assert torch.allclose(sae(attn, x, text), plain, atol=1e-6)
    # Eq. 8: w * softmax(QK^T/sqrt(d)) V, before the output projection
    sae.weights = torch.full((2, 4, 4), 3.0)
    sae.weights[1] = 1.0
    out = sae(attn, x, text)
    w_out = attn.to_out[0].weight
    core_plain = (plain - attn.to_out[0].bias) @ torch.linalg.pinv(w_out).T
    expected = torch.cat([3 * core_plain[:1], core_plain[1:]]) @ w_out.T + attn.to_out[0].bias
    assert torch.allclose(out, expected, atol=1e-4)
    # classifier-free guidance: a batch of 2B reuses the B weight maps
    assert sae(attn, torch.cat([x, x]), torch.cat([text, text])).shape == (4, 16, 8)
    with pytest.raises(ValueError, match="cross-attention"):
        sae(attn, x)


def test_enhanced_reweights_only_inside_the_block_and_restores_the_unet(tmp_path):
    models.quiet()
    pipe = models.build_tiny_pipeline(TinyArchConfig(), image_size=32, work_dir=tmp_path, seed=0)
    pipe = models.prepare(pipe, ModelConfig())
    unet = pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    z = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, TinyArchConfig().text_hidden)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=text).sample
        masks = torch.zeros(2, 8, 8)
        masks[:, 2:6, 2:6] = 1
        with defectsynth.enhanced(unet, torch.randn(2, 4, 8, 8), masks):
            swapped = unet.attn_processors
            assert all(
                isinstance(p, defectsynth.SelectiveAttention) == k.endswith("attn2.processor")
                for k, p in swapped.items()
            )
            boosted = unet(z, t, encoder_hidden_states=text).sample
            doubled = unet(torch.cat([z, z]), torch.cat([t, t]),
                           encoder_hidden_states=torch.cat([text, text])).sample  # fmt: skip
        after = unet(z, t, encoder_hidden_states=text).sample
    assert not torch.allclose(boosted, plain)
    assert torch.allclose(doubled[:2], boosted, atol=1e-5)
    assert torch.equal(after, plain)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_fuse_follows_equation_9():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 5)
    original = z.clone()
    assert torch.equal(defectsynth.fuse(z[:1], rate=0.5, base_weight=0.5, gen=gen), z[:1])
    same = defectsynth.fuse(z, rate=1.0, base_weight=1.0, gen=gen)
    assert torch.equal(same, z)  # all the weight on the base: nothing changes

    out = defectsynth.fuse(z, rate=0.2, base_weight=0.5, gen=torch.Generator().manual_seed(3))
    changed = (out != z).any(dim=1)  # (B, h, w)
    assert changed.flatten(1).sum(1).le(5).all()  # 0.2 x 25 positions per latent
    # the first latent by hand: its chosen positions, fused with the best matches
    idx = torch.randperm(25, generator=torch.Generator().manual_seed(3))[:5]
    flat = z.view(3, 4, 25)
    sel = flat[0][:, idx]
    fused = 0.5 * sel
    for j in (1, 2):
        fused = fused + 0.25 * flat[j][:, (sel.T @ flat[j]).argmax(1)]
    assert torch.allclose(out.view(3, 4, 25)[0][:, idx], fused)
    assert not torch.equal(out, z) and torch.equal(z, original)  # the input is untouched
