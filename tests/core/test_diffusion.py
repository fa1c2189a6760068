"""core/diffusion on the tiny profile: tokenizer, textual inversion, LoRA, save/reload
into a fresh pipeline with diffusers' loaders, generation determinism, the sd15 loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defectgen.config import ModelConfig, TinyArchConfig
from defectgen.core.diffusion import adapt, loops, models, sample
from defectgen.core.diffusion.tokenizer import build_tokenizer
from defectgen.errors import ConfigError
from tests.conftest import texture

CPU = models.Runtime(torch.device("cpu"), torch.float32)
SIZE = 32


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random-weight tiny pipeline saved in SD1.5's on-disk layout."""
    root = tmp_path_factory.mktemp("tiny")
    models.quiet()
    pipe = models.build_tiny_pipeline(TinyArchConfig(), image_size=SIZE, work_dir=root, seed=0)
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


def fresh(base_dir: Path):
    pipe = models.load_pipeline(base_dir, revision=None, rt=CPU)
    return models.prepare(pipe, ModelConfig())


def latents_of(pipe, n: int = 6) -> loops.LatentCache:
    images = [texture(i, (SIZE, SIZE)) for i in range(n)]
    return loops.encode_latents(pipe.vae, loops.to_pixels(images), CPU, flip=True)


def loop_kwargs(pipe, prompt: str, steps: int = 3):
    return dict(
        ids=loops.prompt_ids(pipe, prompt),
        latents=latents_of(pipe),
        noise_scheduler=models.training_scheduler(pipe),
        steps=steps,
        batch_size=2,
        gen=torch.Generator().manual_seed(0),
        rt=CPU,
        log=lambda step, loss: None,
    )


def test_tokenizer_matches_openai_clip_ids(tmp_path):
    tok = build_tokenizer(tmp_path)
    assert len(tok) == 49408
    # OpenAI CLIP's ids: <start> a photo of a cat <end>
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("x", padding="max_length", max_length=77).input_ids[-1] == 49407


def test_textual_inversion_trains_only_the_new_row(base_dir):
    pipe = fresh(base_dir)
    token_id = adapt.add_token(pipe, "<crack>", None)
    emb = pipe.text_encoder.get_input_embeddings().weight
    before = emb.detach().clone()
    assert torch.allclose(before[token_id], before[:token_id].mean(0))  # the "<unknown>" start
    trainable, commit = adapt.token_parameters(pipe, token_id)
    assert [tuple(p.shape) for p in trainable] == [(emb.shape[1],)]  # one row, not the table
    assert trainable[0].dtype == torch.float32
    adapt.train(pipe, trainable, lr=5e-2, **loop_kwargs(pipe, "a photo of <crack>"))
    assert torch.equal(emb.detach(), before)  # the table is untouched until commit
    commit()
    assert torch.equal(emb[token_id], trainable[0].detach().to(emb.dtype))
    after = emb.detach()
    changed = (before != after).any(dim=1).nonzero().flatten().tolist()
    assert changed == [token_id]
    assert torch.equal(before[:token_id], after[:token_id])  # bit-identical


def test_initializer_must_be_one_token(base_dir):
    pipe = fresh(base_dir)
    with pytest.raises(ConfigError, match="one|tokens"):
        adapt.add_token(pipe, "<x>", "photovoltaic module")
    pipe = fresh(base_dir)
    token_id = adapt.add_token(pipe, "<y>", "defect")
    emb = pipe.text_encoder.get_input_embeddings().weight
    word = pipe.tokenizer.encode("defect", add_special_tokens=False)[0]
    assert torch.equal(emb[token_id], emb[word])


def test_adding_an_existing_token_is_refused(base_dir):
    pipe = fresh(base_dir)
    adapt.add_token(pipe, "<crack>", None)
    with pytest.raises(ConfigError, match="already in the tokenizer"):
        adapt.add_token(pipe, "<crack>", None)


@pytest.mark.parametrize("alpha", [None, 4.0])  # 4.0: the scale alpha / r must survive a reload
def test_lora_adapter_reloads_into_a_fresh_pipeline(base_dir, tmp_path, alpha):
    pipe = fresh(base_dir)
    token_id = adapt.add_token(pipe, "<crack>", None)
    kw = loop_kwargs(pipe, "a photo of <crack>")
    trainable, commit = adapt.token_parameters(pipe, token_id)
    adapt.train(pipe, trainable, lr=5e-2, **kw)
    commit()
    lora = adapt.add_lora(pipe, rank=1, alpha=alpha, seed=0)
    lora_b = [p for n, p in pipe.unet.named_parameters() if "lora_B" in n]
    assert all(torch.count_nonzero(p) == 0 for p in lora_b)  # B starts at zero
    adapt.train(pipe, lora, lr=1e-2, **kw)
    assert any(torch.count_nonzero(p) > 0 for p in lora_b)  # ... and trained away from it
    files = adapt.save_adapter(
        pipe, tmp_path, token="<crack>", token_id=token_id, lora=True, attention=False
    )
    assert files == [adapt.EMBEDS_NAME, adapt.LORA_NAME]
    keys = set(load_file(tmp_path / adapt.LORA_NAME))
    assert keys and all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    # One down and one up matrix per attention projection of UNet and text encoder.
    projections = [name for name, _ in adapt.attention_modules(fresh(base_dir))]
    assert len(projections) > 8 and len(keys) == 2 * len(projections)
    for name in projections:
        assert len([k for k in keys if k.startswith(name + ".")]) == 2, name
    assert not any("embed" in k for k in keys)  # the resized embedding stays out
    ids = loops.prompt_ids(pipe, "a photo of <crack>")
    with torch.no_grad():
        expected = pipe.text_encoder(ids)[0]
        z = torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(1))
        unet_expected = pipe.unet(z, 10, expected).sample

    other = fresh(base_dir)
    adapt.load_adapter(other, tmp_path, "<crack>")
    reloaded = [k for m in (other.unet, other.text_encoder) for k, _ in m.named_parameters()]
    assert len([k for k in reloaded if "lora_A" in k]) == len(projections)
    with torch.no_grad():
        got = other.text_encoder(loops.prompt_ids(other, "a photo of <crack>"))[0]
        unet_got = other.unet(z, 10, got).sample
    assert torch.allclose(expected, got, atol=1e-6)
    assert torch.allclose(unet_expected, unet_got, atol=1e-5)


def test_full_attention_adapter_reloads(base_dir, tmp_path):
    pipe = fresh(base_dir)
    token_id = adapt.add_token(pipe, "<dent>", None)
    params = adapt.attention_parameters(pipe)
    before = [p.detach().clone() for p in params]
    adapt.train(pipe, params, lr=1e-2, **loop_kwargs(pipe, "a photo of <dent>"))
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    adapt.save_adapter(
        pipe, tmp_path, token="<dent>", token_id=token_id, lora=False, attention=True
    )
    other = fresh(base_dir)
    adapt.load_adapter(other, tmp_path, "<dent>")
    assert models.fingerprint(other) == models.fingerprint(pipe)


def _held_loss(pipe, prompt: str, cache: loops.LatentCache) -> float:
    """The denoising loss on `cache` under `prompt`, with fixed noise and timesteps."""
    gen = torch.Generator().manual_seed(123)
    rows = torch.arange(len(cache))
    z = cache.latents(rows, torch.randn(cache.mean.shape, generator=gen))
    cond = pipe.text_encoder(loops.prompt_ids(pipe, prompt))[0].expand(len(z), -1, -1)
    scheduler = models.training_scheduler(pipe)
    with torch.no_grad():
        losses = [
            loops.denoise_loss(
                pipe.unet,
                scheduler,
                z,
                **loops.noise_draw(scheduler, z.shape, gen),
                cond=cond,
                rt=CPU,
            )
            for _ in range(4)
        ]
    return float(torch.stack(losses).mean())


def test_prior_preservation_keeps_the_class_prior(base_dir, tmp_path):
    """DreamBooth's point: the same training with the prior term leaves the model better
    at the class prompt's images than without it; the full UNet reloads exactly."""
    smooth = [np.full((SIZE, SIZE, 3), 40 * i, np.uint8) for i in range(1, 6)]
    held = {}
    for weight in (0.0, 5.0):
        pipe = fresh(base_dir)
        prior_cache = loops.encode_latents(pipe.vae, loops.to_pixels(smooth), CPU, flip=False)
        prior = adapt.Prior(loops.prompt_ids(pipe, "a photo of defect"), prior_cache, weight)
        token_id = adapt.add_token(pipe, "<dent>", "sks")
        params = adapt.unet_parameters(pipe)
        kwargs = loop_kwargs(pipe, "a photo of <dent> defect", steps=40)
        adapt.train(pipe, params, lr=3e-3, prior=prior, **kwargs)
        held[weight] = _held_loss(pipe, "a photo of defect", prior_cache)
    # measured 0.235 vs 0.290 (and 1.09 before training): a 10 % margin
    assert held[5.0] < 0.9 * held[0.0], held
    files = adapt.save_adapter(
        pipe, tmp_path, token="<dent>", token_id=token_id, lora=False, attention=False, unet=True
    )
    assert files == [adapt.EMBEDS_NAME, adapt.UNET_NAME]
    other = fresh(base_dir)
    assert models.fingerprint(other) != models.fingerprint(pipe)
    adapt.load_adapter(other, tmp_path, "<dent>")
    assert models.fingerprint(other) == models.fingerprint(pipe)


def test_generation_is_deterministic_per_image_seed(base_dir):
    pipe = fresh(base_dir)
    parents = [texture(i, (SIZE, SIZE)) for i in range(3)]
    img2img = sample.sampler(pipe, "img2img")
    kw = dict(
        prompt="a photo of a surface", strength=0.6, guidance=2.0, steps=4, size=SIZE, channels=1
    )
    batch = sample.generate(img2img, seeds=[11, 12, 13], parents=parents, **kw)
    alone = sample.generate(img2img, seeds=[12], parents=parents[1:2], **kw)
    assert [b.shape for b in batch] == [(SIZE, SIZE)] * 3 and batch[0].dtype == np.uint8
    assert np.array_equal(batch[1], alone[0])  # independent of the batch it ran in
    assert not np.array_equal(batch[0], batch[1])
    other_seed = sample.generate(img2img, seeds=[99], parents=parents[1:2], **kw)
    assert not np.array_equal(other_seed[0], alone[0])
    txt = sample.sampler(pipe, "txt2img")
    rgb = sample.generate(txt, seeds=[1, 2], parents=None, **{**kw, "channels": 3})
    assert rgb[0].shape == (SIZE, SIZE, 3)


def test_sd15_loader_reads_a_local_checkpoint_folder(base_dir):
    pipe = models.load_pipeline(str(base_dir), revision=None, rt=CPU)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert models.latent_factor(pipe.vae) == 4
    # the frozen base arrives in the configured dtype (diffusers' `dtype=` keyword, which
    # older releases ignored in favour of `torch_dtype=`)
    bf16 = models.load_pipeline(
        base_dir, revision=None, rt=models.Runtime(CPU.device, torch.bfloat16)
    )
    for module in (bf16.unet, bf16.vae, bf16.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_sd15_without_a_local_copy_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="huggingface-cli download .* set model.base"):
        models.load_pipeline("runwayml/stable-diffusion-v1-5", revision=None, rt=CPU)
    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigError, match="no model_index.json"):
        models.load_pipeline(tmp_path / "weights", revision=None, rt=CPU)


def test_runtime_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA device"):
        models.runtime(ModelConfig(device="cuda"))
    assert models.runtime(ModelConfig()) == CPU


def test_vae_loss_terms_measure_what_they_say():
    from defectgen.core.diffusion import vae_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, SIZE, SIZE, generator=gen) * 2 - 1
    assert vae_loss.ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert vae_loss.spectrum_l1(x, x).item() == 0.0
    # a blur keeps the mean and loses the texture: SSIM and the spectrum see it
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert vae_loss.ssim(x, blurred).item() < 0.5
    assert vae_loss.spectrum_l1(x, blurred).item() > 0.1
    features = vae_loss.EffNetActivations()
    assert features.distance(x, x).item() == 0.0
    assert features.distance(x, blurred).item() > 0


def test_vae_objective_with_every_term_trains_and_stops_on_time(base_dir):
    from defectgen.config import VaeLossConfig

    pipe = fresh(base_dir)
    pixels = loops.to_pixels([texture(i, (SIZE, SIZE)) for i in range(8)])
    cfg = VaeLossConfig(
        pixel="l1", ssim=0.5, fft=0.5, perceptual_effnet_lite0=0.1, adversarial=0.1,
        adversarial_start=0.25,
    )  # fmt: skip
    losses = []
    before = [p.detach().clone() for p in pipe.vae.parameters()]
    steps = loops.train_vae(
        pipe.vae, pixels, steps=4, batch_size=4, lr=1e-3, gen=torch.Generator().manual_seed(0),
        rt=CPU, log=lambda step, loss: losses.append(loss), objective=cfg,
    )  # fmt: skip
    assert steps == 4 and len(losses) == 4 and all(np.isfinite(losses))
    assert any(not torch.equal(b, p) for b, p in zip(before, pipe.vae.parameters(), strict=True))
    taken = loops.train_vae(
        pipe.vae, pixels, steps=10_000, batch_size=4, lr=1e-3,
        gen=torch.Generator().manual_seed(0), rt=CPU, log=lambda step, loss: None, seconds=1.0,
    )  # fmt: skip
    assert 1 <= taken < 10_000  # stopped by the clock, not the step count


def test_tiny_latent_shape_is_configurable(tmp_path):
    arch = TinyArchConfig(vae_channels=[16, 32], latent_channels=8)
    pipe = models.build_tiny_pipeline(arch, image_size=SIZE, work_dir=tmp_path, seed=0)
    z = pipe.vae.encode(torch.zeros(1, 3, SIZE, SIZE)).latent_dist.mean
    assert z.shape == (1, 8, SIZE // 2, SIZE // 2)
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 8
    sampler = sample.sampler(pipe, "txt2img")
    out = sample.generate(
        sampler, prompt="a photo", seeds=[0], parents=None, strength=1.0, guidance=1.0,
        steps=2, size=SIZE, channels=3,
    )  # fmt: skip
    assert out[0].shape == (SIZE, SIZE, 3)


def test_adversarial_term_starts_late_by_steps_or_by_the_clock():
    from defectgen.config import VaeLossConfig
    from defectgen.core.diffusion import vae_loss

    cfg = VaeLossConfig(pixel="mse", ssim=0.0, fft=0.0, perceptual_effnet_lite0=0.0,
                        adversarial=0.1, adversarial_start=0.5)  # fmt: skip
    cpu = CPU
    by_steps = vae_loss.Objective(cfg, cpu, steps=10, seed=0)
    assert not by_steps.adversarial_on(4) and by_steps.adversarial_on(5)
    assert not vae_loss.Objective(cfg, cpu, steps=10, seed=0, seconds=3600).adversarial_on(9)
    assert vae_loss.Objective(cfg, cpu, steps=10, seed=0, seconds=0.0).adversarial_on(0)
    # once on, the VAE's loss includes the critic and the critic trains
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    fake = torch.zeros_like(x)
    before = [p.detach().clone() for p in by_steps.disc.parameters()]
    assert by_steps.vae_loss(fake, x, 4) == torch.nn.functional.mse_loss(fake, x)
    by_steps.discriminator_step(fake, x, 4)  # not yet on: no update
    assert all(torch.equal(b, p) for b, p in zip(before, by_steps.disc.parameters(), strict=True))
    assert by_steps.vae_loss(fake, x, 5) != torch.nn.functional.mse_loss(fake, x)
    by_steps.discriminator_step(fake, x, 5)
    assert any(
        not torch.equal(b, p) for b, p in zip(before, by_steps.disc.parameters(), strict=True)
    )


def _trained_lora(base_dir: Path, out: Path) -> None:
    """A textual-inversion + LoRA adapter trained away from its zero start, saved in `out`."""
    pipe = fresh(base_dir)
    token_id = adapt.add_token(pipe, "<pit>", None)
    lora = adapt.add_lora(pipe, rank=2, alpha=None, seed=0)
    adapt.train(pipe, lora, lr=5e-2, **loop_kwargs(pipe, "a photo of <pit>", steps=20))
    adapt.save_adapter(pipe, out, token="<pit>", token_id=token_id, lora=True, attention=False)


def test_sampling_with_the_lora_fused_gives_the_unfused_images(base_dir, tmp_path):
    _trained_lora(base_dir, tmp_path)
    parents = [texture(i, (SIZE, SIZE), rgb=True) for i in range(4)]
    kw = dict(prompt="a photo of <pit>", seeds=[1, 2, 3, 4], parents=parents, strength=0.6,
              guidance=3.0, steps=8, size=SIZE, channels=3)  # fmt: skip
    images = {}
    for fuse_qkv in (None, False, True):  # None: the adapter as loaded, unfused
        pipe = fresh(base_dir)
        adapt.load_adapter(pipe, tmp_path, "<pit>")
        if fuse_qkv is not None:
            models.for_sampling(pipe, ModelConfig(fuse_qkv=fuse_qkv))
            assert not [n for m in (pipe.unet, pipe.text_encoder)
                        for n, _ in m.named_parameters() if "lora_" in n]  # fmt: skip
        images[fuse_qkv] = np.stack(sample.generate(sample.sampler(pipe, "img2img"), **kw))
    base = fresh(base_dir)
    base_images = np.stack(sample.generate(sample.sampler(base, "img2img"), **kw))
    unfused = images[None].astype(int)
    assert np.abs(unfused - base_images).max() > 0  # the adapter changes the images ...
    for fused in (images[False], images[True]):  # ... and fusing does not (uint8 rounding)
        assert np.abs(fused.astype(int) - unfused).max() <= 1


def test_batched_img2img_encode_matches_diffusers_per_image_encode(base_dir):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    pipe = fresh(base_dir)
    stock = StableDiffusionImg2ImgPipeline(
        **{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)},
        requires_safety_checker=False,
    )
    stock.set_progress_bar_config(disable=True)
    batched = sample.sampler(pipe, "img2img")
    assert isinstance(batched, sample.BatchedImg2Img)
    calls = []
    hook = pipe.vae.encoder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    kw = dict(prompt="a photo of a surface", seeds=[5, 6, 7], strength=0.7, guidance=2.0,
              steps=6, size=SIZE, channels=3)  # fmt: skip
    parents = [texture(i, (SIZE, SIZE), rgb=True) for i in range(3)]
    expected = np.stack(sample.generate(stock, parents=parents, **kw)).astype(int)
    assert calls == [1, 1, 1]  # diffusers: one VAE call per image with per-image generators
    calls.clear()
    got = np.stack(sample.generate(batched, parents=parents, **kw)).astype(int)
    hook.remove()
    assert calls == [3]  # one call for the batch
    assert np.abs(got - expected).max() <= 1  # same draws; batched-conv rounding only


def test_compile_is_off_on_the_cpu_unless_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.compile_mode(ModelConfig(), cpu) is None
    assert models.compile_mode(ModelConfig(), cuda) == "default"
    assert models.compile_mode(ModelConfig(compile="off"), cuda) is None
    assert models.compile_mode(ModelConfig(compile="reduce-overhead"), cpu) == "reduce-overhead"


def test_generation_batches_halve_on_device_out_of_memory(base_dir, monkeypatch, capsys):
    """A batch too large for the device is made again at half the size; the images are
    the ones a batch that fits makes (each depends on its seed and parent only)."""
    pipe = sample.sampler(fresh(base_dir), "img2img")
    parents = [texture(i, (SIZE, SIZE)) for i in range(5)]
    kw = dict(prompt="a photo of a surface", seeds=[3, 4, 5, 6, 7], parents=parents,
              strength=0.6, guidance=2.0, steps=3, size=SIZE, channels=1)  # fmt: skip
    fits = [img for _, batch in sample.in_batches(pipe, batch_size=2, **kw) for img in batch]
    real_generate, sizes = sample.generate, []

    def small_device(pipe, *, seeds, **rest):  # a device that holds 2 images at a time
        sizes.append(len(seeds))
        if len(seeds) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real_generate(pipe, seeds=seeds, **rest)

    monkeypatch.setattr(sample, "generate", small_device)
    got = list(sample.in_batches(pipe, batch_size=8, **kw))
    assert sizes == [5, 4, 2, 2, 1]  # 8 (5 left) -> 4 -> 2, then what is left
    assert [index for index, _ in got] == [[0, 1], [2, 3], [4]]
    images = [img for _, batch in got for img in batch]
    assert all(np.array_equal(a, b) for a, b in zip(images, fits, strict=True))
    assert "out of device memory" in capsys.readouterr().err
