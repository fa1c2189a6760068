"""The DDPM mask producer (defectgen.core.maskgen) at toy size."""

import numpy as np
import torch

from defectgen.core import maskgen


def _rectangles(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        m = np.zeros((48, 48), np.uint8)
        r, c = rng.integers(4, 28, 2)
        m[r : r + rng.integers(6, 16), c : c + rng.integers(6, 16)] = 255
        out.append(m)
    return out


def test_masks_resize_to_the_model_and_stay_binary():
    masks = _rectangles(3, np.random.default_rng(0))
    x = maskgen.to_tensor(masks, 32)
    assert x.shape == (3, 1, 32, 32) and set(x.unique().tolist()) <= {-1.0, 1.0}
    # area-resized then rebinarised: the defect keeps about its area fraction
    for m, t in zip(masks, x, strict=True):
        assert abs((t > 0).float().mean().item() - (m > 0).mean()) < 0.05


def test_producer_learns_and_samples_binary_masks_of_the_image_size():
    masks = _rectangles(12, np.random.default_rng(1))
    unet = maskgen.build((16, 32, 32), seed=0, size=32)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(0)
    maskgen.train(
        unet, masks, steps=80, batch_size=8, lr=1e-3, gen=gen, log=lambda s, v: losses.append(v)
    )
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])  # it learns the denoising task
    out = maskgen.sample(unet, [1, 2, 3], shape=(48, 40), sample_steps=10)
    assert len(out) == 3
    for m in out:
        assert m.shape == (48, 40) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    again = maskgen.sample(unet, [2], shape=(48, 40), sample_steps=10)[0]
    assert np.array_equal(again, out[1])  # a mask depends on its seed only
    assert not np.array_equal(out[0], out[1])
    # latent-space interpolation (DefectSynth's, on this producer's DDIM-inverted noise)
    mids = maskgen.interpolate_latent(unet, masks[0], masks[1], [0.25, 0.5, 0.75], steps=10)
    assert len(mids) == 3
    assert all(m.shape == (48, 48) and set(np.unique(m)) <= {0, 255} for m in mids)


def test_slerp_ends_at_its_endpoints_and_keeps_the_norm_of_gaussian_noise():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(1, 64, 64, generator=g), torch.randn(1, 64, 64, generator=g)
    assert torch.allclose(maskgen.slerp(z0, z1, 0.0), z0, atol=1e-5)
    assert torch.allclose(maskgen.slerp(z0, z1, 1.0), z1, atol=1e-5)
    mid = maskgen.slerp(z0, z1, 0.5)
    # nearly orthogonal noises: slerp stays on the shell (norm ~64), lerp shrinks by ~1/sqrt2
    assert abs(mid.norm() / z0.norm() - 1) < 0.02
    assert ((z0 + z1) / 2).norm() / z0.norm() < 0.75
