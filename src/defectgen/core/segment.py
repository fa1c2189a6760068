"""The segmentation model that judges image + mask pairs: a small U-Net (Ronneberger et
al. 2015) trained on `real` vs `real+synthetic` pairs, as DefFiller evaluates (seed 002,
4.4.3; its 1:5 train/test scarcity is a preprocess.split choice, see stages/segment).

No maintained segmentation library installs offline with its dependencies here, so
this is a plain implementation: per level two 3x3 conv + batch-norm + ReLU, 2x2 max-pool
down, transposed conv up, skip concatenation, a 1x1 head giving one logit per pixel.
Loss: binary cross-entropy + soft Dice (defects are a few percent of the pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from defectgen.core.device import CPU, Runtime
from defectgen.core.steps import SpanLoss, batches, eval_steps


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
    rt: Runtime = CPU,
) -> SegFit:
    """Train a U-Net from scratch on the pairs for exactly `steps` optimizer steps (the
    equal budget of a comparison; random flips); reproducible from `seed` (init, order,
    flips), leaving the global RNG as it was. Trains on `rt.device` in float32 under
    `rt.autocast`; losses are summed on the device, read LOSS_POINTS times."""
    x, y = to_inputs(images), to_targets(masks)
    marks = set(eval_steps(steps, LOSS_POINTS))
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(x.shape[1], widths).to(rt.device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        span = SpanLoss(rt.device)
        for step, idx in enumerate(batches(len(x), batch_size, steps), start=1):
            xb, yb = x[idx], y[idx]
            if torch.rand(()) < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            if torch.rand(()) < 0.5:
                xb, yb = xb.flip(-2), yb.flip(-2)
            with rt.autocast:
                logits = model(xb.to(rt.device))
            span.update(opt, loss_fn(logits.float(), yb.to(rt.device)), len(idx))
            if step in marks:
                losses.append(span.read())
    model.eval()
    return SegFit(model, losses)


CLASSICAL = (
    "image and mask jointly: rotation within 10 degrees, horizontal and vertical flips "
    "(p 0.5 each); the image alone: brightness and contrast x0.8-1.2"
)


def classical_pair(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One classically augmented copy of a real (image, mask) pair (CLASSICAL): the
    geometric changes move the mask with the image (nearest-neighbour, so it stays
    binary), the photometric ones touch the image only."""
    img, msk = Image.fromarray(image), Image.fromarray(mask)
    angle = float(rng.uniform(-10, 10))
    img = img.rotate(angle, resample=Image.BILINEAR)
    msk = msk.rotate(angle, resample=Image.NEAREST)
    for flip in (Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM):
        if rng.random() < 0.5:
            img, msk = img.transpose(flip), msk.transpose(flip)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
    return np.asarray(img), np.asarray(msk)


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
