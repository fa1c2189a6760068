"""GPU throughput of adapter training, generation and gate features against the hardware floor.

The model is the full-size Stable Diffusion 1.5 architecture built from its published
configs (below) with random weights: the compute cost of every step equals the real
model's, and nothing is downloaded. Everything runs through the production code
(defectgen.core.diffusion: adapt.train for textual inversion and LoRA, sample.generate
for image-oriented generation; defectgen.core.metrics for gate features).

Measured, in bf16 at 512x512 unless `--smoke`:
- the GPU's bf16 matmul peak (8192^3 products): the floor every figure is held against;
- textual-inversion and LoRA training steps/s at batch 4 (StableSDG's setting), SDPA
  attention, with and without gradient checkpointing, and with `torch.compile`d UNet;
- img2img generation images/s at strength 0.5, guidance 7 (CFG doubles the UNet batch),
  20 and 50 scheduler steps, batch 1/8/32;
- gate feature extraction images/s (EfficientNet-Lite0 as the offline gate uses it, and
  the Inception-v3 architecture at 299 px as standard FID would);
- per unit: FLOPs (torch.utils.flop_counter), the achieved fraction of the measured
  peak, the floor-limited rate (peak / FLOPs per unit) and peak GPU memory.

    python benchmarks/gpu_diffusion.py                 # on a CUDA machine
    python benchmarks/gpu_diffusion.py --smoke         # tiny sizes, CPU: checks the harness

Writes benchmarks/results/gpu_diffusion-<device>.json and .md (a --smoke run writes
under benchmarks/work/ instead: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
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
from defectgen.core.diffusion.train import LatentCache, prompt_ids  # noqa: E402

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

# The papers' own figures (seed 000: StableSDG; seed 004: DefectSynth).
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
    return models.prepare(pipe, ModelConfig(gradient_checkpointing=False))


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


def bench_training(pipe, rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Textual inversion, then LoRA, steps/s at batch `args.batch_train`, as adapt.train runs
    them, with and without gradient checkpointing and with a compiled UNet."""
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
    for phase in ("ti", "lora"):
        if phase == "lora":
            commit()
            lora_params = adapt.add_lora(pipe, rank=1, alpha=None, seed=0)
        params = emb_params if phase == "ti" else lora_params
        step_flops = 0  # the model's FLOPs per step, counted eagerly (recomputation not counted)
        compiled = () if args.smoke or args.no_compile else ("sdpa+compile",)
        variants = ("sdpa", "sdpa+checkpointing") + compiled
        for variant in variants:
            if past(args):
                log({"name": f"{phase} train, {variant}", "error": "not run: deadline"})
                continue
            unet = pipe.unet
            if variant == "sdpa+checkpointing":
                pipe.unet.enable_gradient_checkpointing()
            if variant == "sdpa+compile":
                pipe.unet = torch.compile(unet)
            gen = torch.Generator().manual_seed(0)

            def steps(k: int, params=params, gen=gen) -> None:
                adapt.train(
                    pipe,
                    params,
                    ids,
                    cache,
                    sched,
                    steps=k,
                    batch_size=args.batch_train,
                    lr=1e-4,
                    gen=gen,
                    rt=rt,
                    log=lambda s, v: None,
                )

            reset_memory(rt)
            try:
                if not step_flops:
                    step_flops = flops(lambda steps=steps: steps(1))
                seconds = timed(lambda steps=steps: steps(args.train_steps), rt, repeats=1)
                row = entry(
                    f"{phase} train, {variant}",
                    "steps",
                    args.train_steps / seconds,
                    step_flops,
                    peak,
                    rt,
                    batch=args.batch_train,
                )
            except Exception as exc:  # torch.compile may not support a setup: record why
                row = {"name": f"{phase} train, {variant}", "error": f"{type(exc).__name__}: {exc}"}
            finally:
                pipe.unet = unet
                if variant == "sdpa+checkpointing":
                    pipe.unet.disable_gradient_checkpointing()
            log(row)


def bench_generation(pipe, rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Image-oriented generation as the generate stage runs it: img2img at strength 0.5,
    guidance 7 (CFG: the UNet sees 2x the batch), per-image seeds."""
    size = pipe.vae.config.sample_size
    img2img = sample.sampler(pipe, "img2img")
    rng = np.random.default_rng(0)
    for steps in (20, 50):
        for batch in args.batches:
            if past(args):
                log({"name": f"img2img {steps} steps, batch {batch}", "error": "not run: deadline"})
                continue
            parents = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]

            def run(n: int = batch, parents=parents, steps=steps) -> None:
                sample.generate(
                    img2img,
                    prompt="a photo of <bench>",
                    seeds=list(range(n)),
                    parents=parents[:n],
                    strength=0.5,
                    guidance=7.0,
                    steps=steps,
                    size=size,
                    channels=3,
                )

            reset_memory(rt)
            try:
                seconds = timed(run, rt, repeats=args.repeats)
                image_flops = flops(lambda run=run: run(1))
                row = entry(
                    f"img2img {steps} steps, batch {batch}",
                    "images",
                    batch / seconds,
                    image_flops,
                    peak,
                    rt,
                    batch=batch,
                    steps=steps,
                )
            except torch.OutOfMemoryError as exc:
                row = {"name": f"img2img {steps} steps, batch {batch}", "error": str(exc)[:200]}
            log(row)


def bench_features(rt, peak: float, args, log: Callable[[dict], None]) -> None:
    """Gate feature extraction: EfficientNet-Lite0 (the offline gate's extractor) through
    defectgen.core.metrics, and the Inception-v3 architecture (standard FID's) at 299 px."""
    from defectgen._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    size = 64 if args.smoke else 512
    batch = 8 if args.smoke else 128
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    try:
        from defectgen.core import metrics

        extractor = metrics.make_extractor(metrics.EFFNET, weights=None, device=rt.device)
        run = lambda: metrics.extract(extractor, list(images), batch_size=batch)  # noqa: E731
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
    ti, lora = by.get("ti train, sdpa"), by.get("lora train, sdpa")
    if ti and lora:
        minutes = (1000 / ti["per_s"] + 1000 / lora["per_s"]) / 60
        out.append(
            f"Adaptation, 1000 TI + 1000 LoRA steps at batch 4 (StableSDG's schedule): "
            f"{minutes:.1f} min per class on {device} vs {PAPER_TRAIN_MIN_PER_CLASS_V100} min on "
            f"one V100 (seed 000): {PAPER_TRAIN_MIN_PER_CLASS_V100 / minutes:.1f}x faster."
        )
    best50 = max(
        (r for n, r in by.items() if n.startswith("img2img 50")),
        default=None,
        key=lambda r: r["per_s"],
    )
    if best50:
        out.append(
            f"Generation, 50 steps: {1 / best50['per_s']:.3f} s per {px} px image "
            f"({best50['name']}) on {device} vs {PAPER_S_PER_IMAGE_4090_50_STEPS} s per 256 px "
            f"image with SAE on an RTX 4090 (seed 004): "
            f"{PAPER_S_PER_IMAGE_4090_50_STEPS * best50['per_s']:.1f}x, with "
            f"{(px / 256) ** 2:.2g}x the pixels; vs its "
            f"{PAPER_PAIRS_PER_S_4090} image-mask pairs/s: "
            f"{best50['per_s'] / PAPER_PAIRS_PER_S_4090:.1f}x (img2img at strength 0.5 runs "
            "half the steps)."
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
    ap.add_argument("--batches", default="1,8,32", help="generation batch sizes")
    ap.add_argument("--batch-train", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="train,generate,features")
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
        args.batches, args.train_steps, args.repeats = [1, 2], 2, 1
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
        if "generate" in wanted:
            bench_generation(pipe, rt, peak, args, log)
        if "train" in wanted:  # last: it adds a token and LoRA layers to the pipeline
            bench_training(pipe, rt, peak, args, log)
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
