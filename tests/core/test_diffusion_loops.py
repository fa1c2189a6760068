"""The training loops draw their random numbers ahead, in chunks, and keep their inputs on
the device; on the CPU their results must be bit-identical to the plain loop that draws
each step's numbers as it goes. The references below are that plain loop, written out
step by step (one generator; per step: batch rows, posterior noise, diffusion noise,
timesteps, in that order), so a change of draw order or arithmetic fails here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defectgen.core.diffusion import adapt, control, loops, models
from tests.conftest import texture
from tests.core import test_diffusion as diffusion_tests

# the tiny random-weight base saved in SD1.5's layout, and a fresh prepared copy of it
base_dir = diffusion_tests.base_dir
CPU, SIZE, fresh = diffusion_tests.CPU, diffusion_tests.SIZE, diffusion_tests.fresh

BATCH = 2
STEPS = 7  # more than one chunk below, and a partial last one
CHUNK = 3


def pixels(n: int = 5) -> torch.Tensor:
    return loops.to_pixels([texture(i, (SIZE, SIZE)) for i in range(n)])


def reference_latents(cache: loops.LatentCache, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(cache), (BATCH,), generator=gen)
    mean, std = cache.mean[idx], cache.std[idx]
    return (mean + std * torch.randn(mean.shape, generator=gen)) * cache.scaling


def reference_loss(unet, scheduler, z, cond, gen, **extra) -> torch.Tensor:
    noise = torch.randn(z.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z),), generator=gen)
    noisy = scheduler.add_noise(z, noise, t)
    kwargs = extra["residuals"](noisy, t) if extra else {}
    pred = unet(noisy, t, cond, return_dict=False, **kwargs)[0]
    return F.mse_loss(pred.float(), noise.float())


def reference_adapt(pipe, params, ids, cache, scheduler, gen, prior=None) -> None:
    opt = torch.optim.Adam(params, lr=1e-2)

    def loss_on(prompt_ids, c):
        z = reference_latents(c, gen)
        cond = pipe.text_encoder(prompt_ids)[0].expand(len(z), -1, -1)
        return reference_loss(pipe.unet, scheduler, z, cond, gen)

    for _ in range(STEPS):
        loss = loss_on(ids, cache)
        if prior is not None:
            loss = loss + prior.weight * loss_on(prior.ids, prior.latents)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def ti_then_lora(pipe, loop, prior=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Textual inversion, then LoRA (StableSDG's two phases on one generator), by `loop`."""
    token_id = adapt.add_token(pipe, "<crack>", None)
    ids = loops.prompt_ids(pipe, "a photo of <crack>")
    cache = loops.encode_latents(pipe.vae, pixels(), CPU, flip=True)
    scheduler = models.training_scheduler(pipe)
    gen = torch.Generator().manual_seed(0)
    row, commit = adapt.token_parameters(pipe, token_id)
    loop(pipe, row, ids, cache, scheduler, gen, None)
    commit()
    lora = adapt.add_lora(pipe, rank=2, alpha=None, seed=0)
    loop(pipe, lora, ids, cache, scheduler, gen, prior)
    return [p.detach().clone() for p in (*row, *lora)], gen.get_state()


def production_adapt(pipe, params, ids, cache, scheduler, gen, prior) -> None:
    adapt.train(
        pipe, params, ids, cache, scheduler, steps=STEPS, batch_size=BATCH, lr=1e-2, gen=gen,
        rt=CPU, log=lambda step, loss: None, prior=prior, chunk=CHUNK,
    )  # fmt: skip


def assert_identical(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("with_prior", [False, True])  # True: DreamBooth's two-term loss
def test_adaptation_is_bit_identical_to_the_per_step_loop(base_dir, with_prior):
    def prior_for(pipe):
        if not with_prior:
            return None
        cache = loops.encode_latents(pipe.vae, pixels(3), CPU, flip=False)
        return adapt.Prior(loops.prompt_ids(pipe, "a photo of steel"), cache, 0.5)

    expected_pipe, got_pipe = fresh(base_dir), fresh(base_dir)
    expected, expected_state = ti_then_lora(
        expected_pipe,
        lambda p, params, ids, c, s, g, prior: reference_adapt(p, params, ids, c, s, g, prior),
        prior_for(expected_pipe),
    )
    got, got_state = ti_then_lora(got_pipe, production_adapt, prior_for(got_pipe))
    assert_identical(got, expected)
    assert torch.equal(got_state, expected_state)  # the same numbers drawn, no more
    assert any(torch.count_nonzero(p) for p in got[1:])  # LoRA trained away from zero B


def test_denoiser_pretraining_is_bit_identical(base_dir):
    def run(production: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        pipe = fresh(base_dir)
        unet = pipe.unet
        cache = loops.encode_latents(pipe.vae, pixels(), CPU, flip=False)
        with torch.no_grad():
            cond, uncond = (pipe.text_encoder(loops.prompt_ids(pipe, t))[0] for t in ("steel", ""))
        scheduler = models.training_scheduler(pipe)
        gen = torch.Generator().manual_seed(1)
        if production:
            loops.train_denoiser(
                unet, cache, cond, uncond, scheduler, steps=STEPS, batch_size=BATCH, lr=1e-3,
                uncond_prob=0.5, gen=gen, rt=CPU, log=lambda s, v: None, chunk=CHUNK,
            )  # fmt: skip
        else:
            unet.float().train().requires_grad_(True)
            opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
            for _ in range(STEPS):
                z = reference_latents(cache, gen)
                drop = torch.rand(len(z), generator=gen) < 0.5
                c = torch.where(drop[:, None, None], uncond, cond)
                loss = reference_loss(unet, scheduler, z, c, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return [p.detach().clone() for p in unet.parameters()], gen.get_state()

    (expected, expected_state), (got, got_state) = run(False), run(True)
    assert_identical(got, expected)
    assert torch.equal(got_state, expected_state)


def test_vae_pretraining_is_bit_identical(base_dir):
    from defectgen.config import VaeLossConfig

    objective = VaeLossConfig(pixel="mse", ssim=0.0, fft=0.0, perceptual_effnet_lite0=0.0)
    kl_weight = objective.kl_weight  # the loop below writes out MSE + KL

    def run(production: bool) -> tuple[list[torch.Tensor], float]:
        vae = fresh(base_dir).vae
        x_all = pixels(6)
        gen = torch.Generator().manual_seed(2)
        if production:
            loops.train_vae(
                vae, x_all, steps=STEPS, batch_size=BATCH, lr=1e-3, gen=gen, rt=CPU,
                log=lambda s, v: None, chunk=CHUNK, objective=objective,
            )  # fmt: skip
        else:
            vae.float().train().requires_grad_(True)
            opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
            for _ in range(STEPS):
                x = x_all[torch.randint(0, len(x_all), (BATCH,), generator=gen)]
                x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x, x.flip(-1))
                posterior = vae.encode(x).latent_dist
                eps = torch.randn(posterior.mean.shape, generator=gen)
                recon = vae.decode(posterior.mean + posterior.std * eps).sample
                loss = F.mse_loss(recon.float(), x) + kl_weight * posterior.kl().float().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            vae.eval().requires_grad_(False)
            cache = loops.encode_latents(vae, x_all, CPU, flip=False)
            vae.register_to_config(scaling_factor=float(1.0 / cache.mean.std()))
        return [p.detach().clone() for p in vae.parameters()], vae.config.scaling_factor

    (expected, expected_scale), (got, got_scale) = run(False), run(True)
    assert_identical(got, expected)
    assert got_scale == expected_scale


def test_controlnet_training_is_bit_identical(base_dir):
    def run(production: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        pipe = fresh(base_dir)
        net = control.build(pipe, seed=0)
        cache = loops.encode_latents(pipe.vae, pixels(4), CPU, flip=False)
        conditions = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
        ids = loops.prompt_ids(pipe, "a photo of <defect>")
        scheduler = models.training_scheduler(pipe)
        gen = torch.Generator().manual_seed(3)
        if production:
            control.train(
                pipe, net, cache, conditions, ids, scheduler, steps=STEPS, batch_size=BATCH,
                lr=1e-3, gen=gen, rt=CPU, log=lambda s, v: None, chunk=CHUNK,
            )  # fmt: skip
        else:
            net.float().train().requires_grad_(True)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
            with torch.no_grad():
                text = pipe.text_encoder(ids)[0]
            for _ in range(STEPS):
                idx = torch.randint(0, len(cache), (BATCH,), generator=gen)
                cond, image_cond = text.expand(BATCH, -1, -1), conditions[idx]
                mean, std = cache.mean[idx], cache.std[idx]
                z = (mean + std * torch.randn(mean.shape, generator=gen)) * cache.scaling

                def residuals(noisy, t, cond=cond, image_cond=image_cond):
                    down, mid = net(noisy, t, encoder_hidden_states=cond,
                                    controlnet_cond=image_cond, return_dict=False)  # fmt: skip
                    return {
                        "down_block_additional_residuals": down,
                        "mid_block_additional_residual": mid,
                    }

                loss = reference_loss(pipe.unet, scheduler, z, cond, gen, residuals=residuals)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return [p.detach().clone() for p in net.parameters()], gen.get_state()

    (expected, expected_state), (got, got_state) = run(False), run(True)
    assert_identical(got, expected)
    assert torch.equal(got_state, expected_state)


def test_draws_come_in_step_order_whatever_the_chunk():
    def one_step(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"a": torch.randint(0, 9, (2,), generator=gen), "b": torch.randn(3, generator=gen)}

    def collect(chunk: int) -> list[dict[str, torch.Tensor]]:
        draws = loops.Draws(one_step, torch.Generator().manual_seed(7), CPU, steps=5, chunk=chunk)
        return [{k: v.clone() for k, v in d.items()} for d in draws]

    gen = torch.Generator().manual_seed(7)
    expected = [one_step(gen) for _ in range(5)]
    for chunk in (1, 2, 5, 50):
        got = collect(chunk)
        assert len(got) == 5
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g["a"], e["a"]) and torch.equal(g["b"], e["b"])
