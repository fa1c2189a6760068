"""The mask-conditioned generator (defectgen.core.diffusion.control) on the tiny profile."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from defectgen.config import ModelConfig, TinyArchConfig
from defectgen.core import masks as masks_core
from defectgen.core.diffusion import control, loops, models
from tests.conftest import texture

CPU = models.Runtime(torch.device("cpu"), torch.float32)
SIZE = 32


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    models.quiet()
    root = tmp_path_factory.mktemp("tiny-control")
    base = models.build_tiny_pipeline(TinyArchConfig(), image_size=SIZE, work_dir=root, seed=0)
    return models.prepare(base, ModelConfig())


def _masks(n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[4 + i : 12 + i, 6 : 14 + i] = 255
        out.append(m)
    return out


def test_controlnet_starts_at_the_base_and_trains_only_itself(pipe):
    net = control.build(pipe)
    # from_unet: the UNet's encoder weights, copied
    assert torch.equal(net.conv_in.weight, pipe.unet.conv_in.weight)
    # zero-initialised output convs: at the start the residuals are all zero
    latents = torch.randn(2, 4, SIZE // 4, SIZE // 4)
    text = torch.zeros(2, 77, TinyArchConfig().text_hidden)
    cond = control.to_conditions([masks_core.coloured(m, (255, 0, 0)) for m in _masks(2)])
    down, mid = net(latents, torch.tensor([10, 500]), encoder_hidden_states=text,
                    controlnet_cond=cond, return_dict=False)  # fmt: skip
    assert all(not d.any() for d in down) and not mid.any()

    images = [texture(i, (SIZE, SIZE)) for i in range(4)]
    cache = loops.encode_latents(pipe.vae, loops.to_pixels(images), CPU, flip=False)
    conditions = control.to_conditions([masks_core.coloured(m, (255, 0, 0)) for m in _masks(4)])
    base_before = models.fingerprint(pipe)
    losses = []
    control.train(pipe, net, cache, conditions, loops.prompt_ids(pipe, "a photo of <defect>"),
                  models.training_scheduler(pipe), steps=3, batch_size=2, lr=1e-3,
                  gen=torch.Generator().manual_seed(0), rt=CPU,
                  log=lambda s, v: losses.append(v))  # fmt: skip
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert models.fingerprint(pipe) == base_before  # the base stays frozen
    assert any(p.abs().sum() > 0 for p in net.controlnet_mid_block.parameters())  # it learned
    with pytest.raises(ValueError, match="3 conditions for 4 images"):
        control.train(pipe, net, cache, conditions[:3], loops.prompt_ids(pipe, "x"),
                      models.training_scheduler(pipe), steps=1, batch_size=1, lr=1e-3,
                      gen=torch.Generator(), rt=CPU, log=lambda s, v: None)  # fmt: skip


def test_pairs_carry_their_conditioning_mask_and_reproduce_per_seed(pipe):
    net = control.build(pipe)
    gen_pipe = control.sampler(pipe, net)
    masks = _masks(2)
    drivers = [masks_core.topological_driver(texture(i, (SIZE, SIZE)), m, (255, 0, 0))
               for i, m in enumerate(masks)]  # fmt: skip
    kwargs = dict(prompt="a photo of <defect>", guidance=2.0, steps=3, channels=1)
    pairs = control.generate_pairs(gen_pipe, masks=masks, conditions=drivers, seeds=[1, 2],
                                   **kwargs)  # fmt: skip
    assert len(pairs) == 2
    for (image, mask), source in zip(pairs, masks, strict=True):
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
        assert np.array_equal(mask, source)  # the pair's annotation is its conditioning mask
    again = control.generate_pairs(gen_pipe, masks=masks[1:], conditions=drivers[1:],
                                   seeds=[2], **kwargs)  # fmt: skip
    assert np.array_equal(again[0][0], pairs[1][0])
    with pytest.raises(ValueError, match="one conditioning image and one seed per mask"):
        control.generate_pairs(gen_pipe, masks=masks, conditions=drivers[:1], seeds=[1, 2],
                               **kwargs)  # fmt: skip


def test_pairs_on_backgrounds_change_only_the_defect_and_its_band(pipe):
    """Blended latent diffusion: a stroke mask, grey backgrounds. Further than `band` px
    from the mask every pixel is the background's own; inside the mask the generator
    drew something new; the annotation is the mask."""
    net = control.build(pipe)
    gen_pipe = control.sampler(pipe, net, blend=True)
    masks = []
    for i in range(2):
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[6 + 3 * i : 24, 10 + i] = 255  # a one-pixel stroke: thinner than a latent cell
        masks.append(m)
    backgrounds = [texture(10 + i, (SIZE, SIZE)) for i in range(2)]
    blend = control.Backgrounds(backgrounds, strength=0.8, dilate=1, feather=1.0)
    conditions = [masks_core.coloured(m, (255, 0, 0)) for m in masks]
    kwargs = dict(prompt="a photo of <defect>", guidance=2.0, steps=5, channels=1)
    pairs = control.generate_pairs(gen_pipe, masks=masks, conditions=conditions, seeds=[1, 2],
                                   backgrounds=blend, **kwargs)  # fmt: skip
    reach = control.band(1, 1.0)
    assert reach == 5
    for (image, mask), source, bg in zip(pairs, masks, backgrounds, strict=True):
        assert np.array_equal(mask, source)
        near = ndimage.binary_dilation(source > 127, iterations=reach)
        assert np.array_equal(image[~near], bg[~near])  # outside the band: the background
        assert not np.array_equal(image[source > 127], bg[source > 127])  # the defect: new
    again = control.generate_pairs(gen_pipe, masks=masks[1:], conditions=conditions[1:],
                                   seeds=[2], backgrounds=control.Backgrounds(
                                       backgrounds[1:], 0.8, 1, 1.0), **kwargs)  # fmt: skip
    assert np.array_equal(again[0][0], pairs[1][0])
    latent, alpha = control.edit_region(masks[0], 1, 1.0, 4)
    assert latent[source_cells(masks[0])].all()  # every latent cell the stroke touches
    assert alpha[masks[0] > 127].min() == 1.0 and alpha.min() == 0.0
    with pytest.raises(ValueError, match="one background per mask"):
        control.generate_pairs(gen_pipe, masks=masks, conditions=conditions, seeds=[1, 2],
                               backgrounds=control.Backgrounds(backgrounds[:1], 0.8, 1, 1.0),
                               **kwargs)  # fmt: skip


def source_cells(mask: np.ndarray, factor: int = 4) -> np.ndarray:
    """The pixels of every factor x factor cell that holds a mask pixel."""
    cells = (mask > 127).reshape(SIZE // factor, factor, SIZE // factor, factor).any(axis=(1, 3))
    return np.kron(cells, np.ones((factor, factor), bool))
