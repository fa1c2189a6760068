"""The segmentation model that judges image + mask pairs: a small U-Net (Ronneberger et
al. 2015) trained on `real` vs `real+synthetic` pairs, as DefFiller evaluates (section
4.4.3; its 1:5 train/test scarcity is a preprocess.split choice, see stages/segment).

No maintained segmentation library installs offline with its dependencies here, so
this is a plain implementation: per level two 3x3 conv + batch-norm + ReLU, 2x2 max-pool
down, transposed conv up, skip concatenation, a 1x1 head giving one logit per pixel.
Loss: binary cross-entropy + soft Dice (defects are a few percent of the pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.config import ClassicalConfig
from defectgen.core import augment
from defectgen.core.device import CPU, Runtime
from defectgen.core.segmetrics import iou_dice
from defectgen.core.train_budget import SpanLoss, batch_order, eval_steps, lr_schedule


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """`widths` per level, top to bottom (input sides must divide by 2**(levels-1))."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
            cin = w
        self.head = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)[:, 0]  # (N, H, W) logits


def to_inputs(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 images (H, W) or (H, W, C) -> (N, C, H, W) in [0, 1]."""
    arr = np.stack([im[:, :, None] if im.ndim == 2 else im for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def to_targets(masks: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(m) > 127 for m in masks])).float()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the batch."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


@dataclass
class SegFit:
    model: UNet
    losses: list[float]  # mean training loss over each of up to LOSS_POINTS step spans
    best_step: int = 0  # the step whose weights were kept (the last without val)
    eval_steps: list[int] = field(default_factory=list)  # val checks
    val_dice: list[float] = field(default_factory=list)  # mean val Dice at those checks


LOSS_POINTS = 20


def fit(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    widths: tuple[int, ...] = (16, 32, 64),
    val: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    evals: int = 1,
    weight_decay: float = 0.0,
    schedule_kind: str = "constant",
    warmup: float = 0.0,
    classes: list[int] | None = None,
    rt: Runtime = CPU,
) -> SegFit:
    """Train a U-Net from scratch on the pairs for exactly `steps` optimizer steps (the
    equal budget of a comparison; random flips; AdamW under the learning-rate schedule);
    reproducible from `seed` (init, order, flips), leaving the global RNG as it was. With
    `val` pairs, mean val Dice is checked `evals` times and the best weights are kept;
    without, the last. With `classes` (each pair's class id) the batches are drawn
    class-balanced (core.train_budget.batch_order). Trains on `rt.device` in float32
    under `rt.autocast`; losses are summed on the device, read LOSS_POINTS times."""
    x, y = to_inputs(images), to_targets(masks)
    marks = set(eval_steps(steps, LOSS_POINTS))
    checks = eval_steps(steps, evals) if val is not None else []
    losses: list[float] = []
    val_dice: list[float] = []
    best_state, best, best_step = None, -1.0, steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(x.shape[1], widths).to(rt.device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        lr_at = lr_schedule(opt, schedule_kind, steps, warmup)
        model.train()
        span = SpanLoss(rt.device)
        for step, idx in enumerate(batch_order(len(x), batch_size, steps, classes), start=1):
            xb, yb = x[idx], y[idx]
            if torch.rand(()) < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            if torch.rand(()) < 0.5:
                xb, yb = xb.flip(-2), yb.flip(-2)
            with rt.autocast:
                logits = model(xb.to(rt.device))
            span.update(opt, loss_fn(logits.float(), yb.to(rt.device)), len(idx))
            lr_at.step()
            if step in marks:
                losses.append(span.read())
            if step in checks:
                maps = predict(model, val[0], rt)
                dice = float(
                    np.mean([iou_dice(p, m)[1] for p, m in zip(maps, val[1], strict=True)])
                )
                val_dice.append(dice)
                if dice > best:
                    best, best_step = dice, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return SegFit(model, losses, best_step, checks, val_dice)


def classical_pair(
    cfg: ClassicalConfig, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One classically augmented copy of a real (image, mask) pair (core.augment's
    recipe): the geometric changes move the mask with the image (nearest-neighbour, so
    it stays binary), the photometric ones touch the image only."""
    copy = augment.classical_copy(cfg, image, rng, mask=mask)
    return copy.image, copy.mask


@torch.no_grad()
def predict(
    model: UNet, images: list[np.ndarray], rt: Runtime = CPU, batch_size: int = 32
) -> list[np.ndarray]:
    """Defect probability maps, float32 (H, W) in [0, 1]."""
    model.eval()
    x = to_inputs(images)
    out = []
    for i in range(0, len(x), batch_size):
        with rt.autocast:
            logits = model(x[i : i + batch_size].to(rt.device))
        out.append(torch.sigmoid(logits.float()).cpu())
    return list(torch.cat(out).numpy())
