"""GPU throughput of adapter training, generation and gate features against the hardware floor.

The model is the full-size Stable Diffusion 1.5 architecture built from its published
configs (below) with random weights: the compute cost of every step equals the real
model's, and nothing is downloaded. Everything runs through the production code
(defectgen.core.diffusion: adapt.train for textual inversion and LoRA, sample.generate
for image-oriented generation; defectgen.core.distances for gate features).

Measured, in bf16 at 512x512 unless `--smoke`:
- the GPU's bf16 matmul peak (8192^3 products): the floor every figure is held against;
- textual-inversion and LoRA training steps/s at batch 4 (StableSDG's setting), SDPA
  attention: the loop as it was (per-step host copies), the sync-free production loop,
  and the same with UNet and text encoder compiled (first step, with the compile, apart);
- img2img generation images/s at strength 0.5, guidance 7 (CFG doubles the UNet batch),
  20 scheduler steps, batch 32, with the trained LoRA: as peft layers, fused into the
  weights, with q/k/v fused, then compiled;
- on request (`--only features`), gate feature extraction images/s (EfficientNet-Lite0
  as the offline gate uses it, and the Inception-v3 architecture at 299 px as standard
  FID would);
- per unit: FLOPs (torch.utils.flop_counter), the achieved fraction of the measured
  peak, the floor-limited rate (peak / FLOPs per unit) and peak GPU memory.

    python benchmarks/gpu_diffusion.py                 # on a CUDA machine
    python benchmarks/gpu_diffusion.py --smoke         # tiny sizes, CPU: checks the harness

Every row runs under a hard limit (`--row-timeout`, and never past `--deadline`).
Writes benchmarks/results/gpu_diffusion-<device>.json and .md (a --smoke run writes
under benchmarks/work/ instead: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from defectgen.core.diffusion import adapt, models, sample  # noqa: E402
from defectgen.core.diffusion.loops import LatentCache, prompt_ids  # noqa: E402

# Stable Diffusion 1.5's published configs (runwayml/stable-diffusion-v1-5: unet/, vae/,
# text_encoder/config.json), the arguments that differ from the classes' defaults.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
# --smoke: the same classes at toy size, so the harness itself can be checked on a CPU.
SMOKE_UNET = dict(
    SD15_UNET,
    block_out_channels=(32, 32, 64, 64),
    sample_size=8,
    cross_attention_dim=32,
    layers_per_block=1,
)
SMOKE_VAE = dict(
    SD15_VAE,
    block_out_channels=(16, 16, 32, 32),
    sample_size=64,
    layers_per_block=1,
    norm_num_groups=8,
)
SMOKE_TEXT = dict(
    SD15_TEXT,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=32,
)

# The papers' own figures (StableSDG; DefectSynth).
PAPER_TRAIN_MIN_PER_CLASS_V100 = 21.6  # 1000 TI + 1000 LoRA steps per class, one V100
PAPER_PAIRS_PER_S_4090 = 0.23  # image-mask pairs/s at 256x256, RTX 4090
PAPER_S_PER_IMAGE_4090_50_STEPS = 3.40  # with SAE, 50 steps, RTX 4090


def build(smoke: bool, rt: models.Runtime, work: Path):
    """The SD1.5-architecture pipeline with random weights, frozen and prepared as
    production prepares a loaded base (SDPA attention)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from defectgen.config import ModelConfig
    from defectgen.core.diffusion.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(work / "tokenizer")  # CLIP's real 49,408-token vocabulary
    text = CLIPTextModel(
        CLIPTextConfig(
            **(SMOKE_TEXT if smoke else SD15_TEXT),
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**(SMOKE_VAE if smoke else SD15_VAE)),
        text_encoder=text,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(SMOKE_UNET if smoke else SD15_UNET)),
        scheduler=DDIMScheduler(**models.SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(rt.device, rt.dtype)
    return models.prepare(pipe, ModelConfig(gradient_checkpointing=False, compile="off"))


def sync(rt: models.Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], rt: models.Runtime, repeats: int) -> float:
    """Seconds per call: one warm-up call, then the mean of `repeats`."""
    fn()
    sync(rt)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(rt)
    return (time.perf_counter() - started) / repeats


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory(rt: models.Runtime) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if rt.device.type == "cuda" else 0.0


def reset_memory(rt: models.Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_peak(rt: models.Runtime, n: int) -> float:
    """Measured bf16 (fp32 on CPU) matmul FLOP/s on random n x n x n products."""
    a = torch.randn(n, n, device=rt.device, dtype=rt.dtype)
    b = torch.randn(n, n, device=rt.device, dtype=rt.dtype)
    seconds = timed(lambda: a @ b, rt, repeats=10)
    return 2 * n**3 / seconds


def entry(name: str, unit: str, per_s: float, unit_flops: int, peak: float, rt, **extra) -> dict:
    """One result row: rate, FLOPs per unit, achieved fraction of the peak, the floor."""
    achieved = per_s * unit_flops
    return {
        "name": name,
        "unit": unit,
        "per_s": per_s,
        "gflop_per_unit": unit_flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "fraction_of_peak": achieved / peak,
        "floor_per_s": peak / unit_flops if unit_flops else None,
        "peak_mem_gib": peak_memory(rt),
        **extra,
    }


def past(args) -> bool:
    """Whether the run's deadline has passed (no new row starts after it)."""
    return args.deadline is not None and time.time() > args.deadline


class RowCut(Exception):
    """A row ran past its hard limit."""


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise RowCut in the row once `seconds` have passed (SIGALRM: Python code, a
    compile included, is interrupted at its next bytecode; a running kernel finishes)."""

    def cut(signum, frame):
        raise RowCut(f"cut at its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def limit(args) -> float:
    """A row's hard limit: its own, or what is left before the deadline if less."""
    left = float("inf") if args.deadline is None else args.deadline - time.time()
    return min(args.row_timeout, left)


def per_step_copies(pipe, params, ids, cache, sched, *, steps, batch_size, gen, rt) -> None:
    """The adaptation loop as it was before the sync-free one (the A row of the A/B):
    each step draws on the CPU and copies the prompt ids, the noisy latents, the
    timesteps and, after the UNet's forward is queued, the target, blocking."""
    opt = torch.optim.Adam(params, lr=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(cache), (batch_size,), generator=gen)
        mean, std = cache.mean[idx], cache.std[idx]
        z = (mean + std * torch.randn(mean.shape, generator=gen)) * cache.scaling
        with rt.autocast:
            cond = pipe.text_encoder(ids.to(rt.device))[0].expand(batch_size, -1, -1)
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        noisy = sched.add_noise(z, noise, t)
        with rt.autocast:
            pred = pipe.unet(noisy.to(rt.device), t.to(rt.device), cond, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.to(rt.device).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


TRAIN_VARIANTS = ("per-step copies", "sync-free", "sync-free + compile")


def bench_training(pipe, rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Textual inversion, then LoRA, steps/s at batch `args.batch_train`: the loop as it
    was (per-step copies), the production sync-free `adapt.train`, and the same with the
    UNet and text encoder compiled (torch.compile, default mode; the first step, which
    compiles, is reported apart from the steady rate). The trained LoRA stays in the
    pipeline for the generation rows."""
    latent = pipe.unet.config.sample_size
    n = 64  # cached latents of the class's images (production caches them once)
    cache = LatentCache(
        torch.randn(n, 4, latent, latent),
        torch.full((n, 4, latent, latent), 0.1),
        float(pipe.vae.config.scaling_factor),
    )
    sched = models.training_scheduler(pipe)
    token_id = adapt.add_token(pipe, "<bench>", None)
    ids = prompt_ids(pipe, "a photo of <bench>")
    emb_params, commit = adapt.token_parameters(pipe, token_id)
    lora_params = None
    eager = pipe.unet, pipe.text_encoder
    for phase in ("ti", "lora"):
        if phase == "lora":
            commit()
            lora_params = adapt.add_lora(pipe, rank=1, alpha=None, seed=0)
        params = emb_params if phase == "ti" else lora_params
        step_flops = 0  # the model's FLOPs per step, counted eagerly
        variants = TRAIN_VARIANTS[:2] if args.no_compile else TRAIN_VARIANTS
        for variant in variants:
            name = f"{phase} train, {variant}"
            if past(args):
                log({"name": name, "error": "not run: deadline"})
                continue
            gen = torch.Generator().manual_seed(0)

            def steps(k: int, params=params, gen=gen, variant=variant) -> None:
                kw = dict(steps=k, batch_size=args.batch_train, gen=gen, rt=rt)
                if variant == "per-step copies":
                    per_step_copies(pipe, params, ids, cache, sched, **kw)
                else:
                    adapt.train(pipe, params, ids, cache, sched, lr=1e-4,
                                log=lambda s, v: None, **kw)  # fmt: skip

            reset_memory(rt)
            try:
                with hard_limit(limit(args)):
                    if variant.endswith("compile"):
                        pipe.unet = torch.compile(eager[0])
                        pipe.text_encoder = torch.compile(eager[1])
                    started = time.perf_counter()
                    steps(1)  # warm-up; compiles in the compiled variant
                    sync(rt)
                    first = time.perf_counter() - started
                    if not step_flops:
                        pipe.unet, pipe.text_encoder = eager
                        step_flops = flops(lambda steps=steps: steps(1))
                        if variant.endswith("compile"):
                            pipe.unet = torch.compile(eager[0])
                            pipe.text_encoder = torch.compile(eager[1])
                    seconds = timed(lambda steps=steps: steps(args.train_steps), rt, repeats=1)
                row = entry(
                    name, "steps", args.train_steps / seconds, step_flops, peak, rt,
                    batch=args.batch_train, first_step_s=first,
                )  # fmt: skip
            except Exception as exc:  # a cut row, or a setup torch.compile refuses: say why
                row = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            finally:
                pipe.unet, pipe.text_encoder = eager
            log(row)


GENERATION_VARIANTS = ("LoRA unfused", "LoRA fused", "LoRA + qkv fused", "fused + compile")


def bench_generation(pipe, rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Image-oriented generation as the generate stage runs it, with the class's adapter
    loaded: img2img at strength 0.5, guidance 7 (CFG: the UNet sees 2x the batch),
    per-image seeds, `args.gen_steps` steps at each batch; the adapter as peft layers,
    then fused as `models.for_sampling` fuses it (LoRA, then q/k/v), then compiled."""
    from defectgen.config import ModelConfig

    size = pipe.vae.config.sample_size
    rng = np.random.default_rng(0)
    if not any("lora_" in k for k, _ in pipe.unet.named_parameters()):
        adapt.add_lora(pipe, rank=1, alpha=None, seed=0)  # generation rows alone (--only)
    variants = GENERATION_VARIANTS[:3] if args.no_compile else GENERATION_VARIANTS
    for variant in variants:
        if variant == "LoRA fused":
            models.for_sampling(pipe, ModelConfig(fuse_qkv=False, compile="off"))
        elif variant == "LoRA + qkv fused":
            pipe.fuse_qkv_projections()
        elif variant == "fused + compile":
            pipe.unet = torch.compile(pipe.unet)
            pipe.vae.decoder = torch.compile(pipe.vae.decoder)
        img2img = sample.sampler(pipe, "img2img")
        for batch in args.batches:
            name = f"img2img {args.gen_steps} steps, batch {batch}, {variant}"
            if past(args):
                log({"name": name, "error": "not run: deadline"})
                continue
            parents = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]

            def run(n: int = batch, parents=parents, img2img=img2img) -> None:
                sample.generate(
                    img2img, prompt="a photo of <bench>", seeds=list(range(n)),
                    parents=parents[:n], strength=0.5, guidance=7.0, steps=args.gen_steps,
                    size=size, channels=3,
                )  # fmt: skip

            reset_memory(rt)
            try:
                with hard_limit(limit(args)):
                    started = time.perf_counter()
                    run()  # warm-up; compiles in the compiled variant
                    sync(rt)
                    first = time.perf_counter() - started
                    seconds = timed(run, rt, repeats=args.repeats)
                    image_flops = flops(lambda run=run: run(1))
                row = entry(
                    name, "images", batch / seconds, image_flops, peak, rt, batch=batch,
                    steps=args.gen_steps, first_call_s=first,
                )  # fmt: skip
            except Exception as exc:  # out of memory, a cut row, a compile failure
                row = {"name": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            log(row)


def bench_features(rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Gate feature extraction: EfficientNet-Lite0 (the offline gate's extractor) through
    defectgen.core.distances, and the Inception-v3 architecture (standard FID's) at 299 px."""
    from defectgen._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    size = 64 if args.smoke else 512
    batch = 8 if args.smoke else 128
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    try:
        from defectgen.core import distances

        extractor = distances.make_extractor(distances.EFFNET, weights=None, device=rt.device)
        run = lambda: distances.extract(extractor, list(images), batch_size=batch)  # noqa: E731
        reset_memory(rt)
        seconds = timed(run, rt, repeats=args.repeats)
        log(
            entry(
                "gate features, EfficientNet-Lite0 (224 px, fp32)",
                "images",
                batch / seconds,
                flops(run) // batch,
                peak,
                rt,
                batch=batch,
            )
        )
    except Exception as exc:  # a missing wheel: say which, measure the rest
        log({"name": "gate features, EfficientNet-Lite0", "error": f"{type(exc).__name__}: {exc}"})
    dtype_name = str(rt.dtype).removeprefix("torch.")
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net = net.eval().to(rt.device, rt.dtype)
    x = torch.rand(batch, 3, 299, 299, device=rt.device, dtype=rt.dtype)
    with torch.no_grad():
        reset_memory(rt)
        seconds = timed(lambda: net(x), rt, repeats=args.repeats)
        log(
            entry(
                f"gate features, Inception-v3 architecture (299 px, {dtype_name})",
                "images",
                batch / seconds,
                flops(lambda: net(x)) // batch,
                peak,
                rt,
                batch=batch,
            )
        )


def paper_ratios(rows: list[dict], device: str, px: int) -> list[str]:
    """Ours vs the papers' own figures, naming the hardware difference."""
    by = {r["name"]: r for r in rows if "per_s" in r}
    out = []

    def best(prefix: str) -> dict | None:
        return max((r for n, r in by.items() if n.startswith(prefix)), default=None,
                   key=lambda r: r["per_s"])  # fmt: skip

    ti, lora = best("ti train"), best("lora train")
    if ti and lora:
        minutes = (1000 / ti["per_s"] + 1000 / lora["per_s"]) / 60
        out.append(
            f"Adaptation, 1000 TI + 1000 LoRA steps at batch 4 (StableSDG's schedule), the "
            f"fastest loops ({ti['name']}; {lora['name']}): {minutes:.1f} min per class on "
            f"{device} vs {PAPER_TRAIN_MIN_PER_CLASS_V100} min on one V100 (StableSDG): "
            f"{PAPER_TRAIN_MIN_PER_CLASS_V100 / minutes:.1f}x faster."
        )
    gen = best("img2img")
    if gen:
        per_image_50 = 50 / gen["steps"] / gen["per_s"]  # the UNet's steps dominate
        out.append(
            f"Generation, scaled to 50 steps: {per_image_50:.3f} s per {px} px image "
            f"({gen['name']}) on {device} vs {PAPER_S_PER_IMAGE_4090_50_STEPS} s per 256 px "
            f"image with SAE on an RTX 4090 (DefectSynth): "
            f"{PAPER_S_PER_IMAGE_4090_50_STEPS / per_image_50:.1f}x, with "
            f"{(px / 256) ** 2:.2g}x the pixels; vs its {PAPER_PAIRS_PER_S_4090} image-mask "
            f"pairs/s: {1 / per_image_50 / PAPER_PAIRS_PER_S_4090:.1f}x (img2img at strength "
            "0.5 runs half the steps)."
        )
    return out


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        f"# GPU benchmark: {m['device']} ({record['date']}, git {record['git']})",
        "",
        f"torch {m['torch']}, CUDA {m['cuda']}, diffusers {m['diffusers']}, peft {m['peft']}. "
        f"Model: {record['model']}. Measured {m['dtype']} matmul peak: "
        f"**{record['peak_tflops']:.2f} TFLOP/s** ({m['peak_n']}^3 products).",
        "",
        "| what | rate | GFLOP per unit | achieved TFLOP/s | of peak | floor-limited rate | "
        "peak memory GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:120]} | | | | | |")
            continue
        floor = f"{r['floor_per_s']:.2f} {r['unit']}/s" if r["floor_per_s"] else "-"
        lines.append(
            f"| {r['name']} | {r['per_s']:.2f} {r['unit']}/s | {r['gflop_per_unit']:.1f} | "
            f"{r['achieved_tflops']:.1f} | {r['fraction_of_peak']:.0%} | {floor} | "
            f"{r['peak_mem_gib']:.1f} |"
        )
    lines += ["", "Against the papers:", ""] + [f"- {s}" for s in record["papers"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the harness")
    ap.add_argument("--batches", default="32", help="generation batch sizes")
    ap.add_argument("--gen-steps", type=int, default=20, help="img2img scheduler steps")
    ap.add_argument("--batch-train", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="train,generate", help="of train,generate,features")
    ap.add_argument("--row-timeout", type=float, default=60.0, help="hard limit per row, s")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="Unix time after which no further row starts (the rows done are kept)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results; benchmarks/work with --smoke)",
    )
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        ap.error("no CUDA device: run on a GPU machine, or pass --smoke to check the harness")
    if args.smoke:
        args.batches, args.train_steps, args.repeats, args.gen_steps = [2], 2, 1, 4
    rt = models.Runtime(
        torch.device("cuda" if cuda and not args.smoke else "cpu"),
        torch.bfloat16 if cuda and not args.smoke else torch.float32,
    )
    if rt.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models.quiet()
    import diffusers
    import peft

    device = torch.cuda.get_device_name() if rt.device.type == "cuda" else "CPU (smoke)"
    peak_n = 1024 if args.smoke else 8192
    peak = matmul_peak(rt, peak_n)
    record = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git(),
        "model": "tiny SD-architecture (smoke)"
        if args.smoke
        else "Stable Diffusion 1.5 architecture, random weights, 512x512",
        "machine": {
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "peft": peft.__version__,
            "dtype": str(rt.dtype).removeprefix("torch."),
            "peak_n": peak_n,
        },
        "peak_tflops": peak / 1e12,
        "rows": [],
    }

    out = args.out or REPO / "benchmarks" / ("work" if args.smoke else "results")
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_diffusion-" + ("smoke" if args.smoke else device.replace(" ", "_"))

    def save() -> None:
        """Both result files, rewritten after every row: a run cut short keeps its rows."""
        record["papers"] = paper_ratios(record["rows"], device, 64 if args.smoke else 512)
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / f"{stem}.md").write_text(markdown(record))

    def log(row: dict) -> None:
        record["rows"].append(row)
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        print(json.dumps(shown), flush=True)
        save()

    print(f"[gpu bench] {device}: matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    save()
    wanted = args.only.split(",")
    if "features" in wanted:  # cheapest first, so a short run still has them
        bench_features(rt, peak, args, log)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build(args.smoke, rt, Path(tmp))
        if "train" in wanted:  # first: its trained LoRA is the generation rows' adapter
            bench_training(pipe, rt, peak, args, log)
        if "generate" in wanted:  # last: it fuses the adapter into the weights
            bench_generation(pipe, rt, peak, args, log)
    save()
    print(markdown(record))
    return 0


def _git() -> str:
    import subprocess

    with contextlib.suppress(OSError):
        res = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        )
        return res.stdout.strip() or "unknown"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
