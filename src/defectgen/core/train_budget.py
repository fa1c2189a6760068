"""Training length as optimizer steps: the equal budget of every comparison.

A condition with more images must not get more updates than its control, so the
training loops (core.classify, core.segment) run a fixed number of steps over a stream
of fresh permutations instead of a number of epochs.
"""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, WeightedRandomSampler


def eval_steps(steps: int, evals: int) -> list[int]:
    """`evals` steps spread evenly over 1..steps, the last one always included."""
    k = min(evals, steps)
    return sorted({round(steps * (i + 1) / k) for i in range(k)})


def batches(n: int, batch_size: int, steps: int):
    """Index batches for `steps` optimizer steps over `n` samples: a stream of fresh
    permutations cut into full batches (epochs are not a unit here, so every condition
    of a comparison can take the same number of steps whatever its size). Draws from
    torch's global RNG: call under a seeded fork."""
    buffer = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def batch_order(n: int, batch_size: int, steps: int, classes=None):
    """Index batches for `steps` optimizer steps: `batches` (fresh permutations), or, with
    `classes` (each sample's class id), batches drawn class-balanced with replacement
    (torch's WeightedRandomSampler, each sample weighted inverse to its class's count),
    so that on an imbalanced train set every class is drawn alike. Draws from torch's
    global RNG: call under a seeded fork."""
    if classes is None:
        return batches(n, batch_size, steps)
    y = torch.as_tensor(classes)
    weight = 1.0 / torch.bincount(y).float()[y]
    draws = WeightedRandomSampler(weight, steps * batch_size)  # with replacement
    return map(torch.tensor, BatchSampler(draws, batch_size, drop_last=True))


class SpanLoss:
    """Mean training loss over the steps since the last read, summed on the device (one
    host read per span, not per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.total, self.seen = torch.zeros((), device=self.device), 0

    def update(self, opt: torch.optim.Optimizer, loss: torch.Tensor, n: int) -> None:
        """One optimizer step on `loss` (the mean over `n` samples), and its record."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.total += loss.detach() * n
        self.seen += n

    def read(self) -> float:
        value = float(self.total) / max(self.seen, 1)
        self._reset()
        return value


def lr_schedule(opt: torch.optim.Optimizer, kind: str, steps: int, warmup: float):
    """The learning-rate schedule over `steps`: "cosine", a linear warmup over the first
    `warmup` fraction then a cosine decay to 0 (torch's LinearLR + CosineAnnealingLR), or
    "constant"."""
    if kind == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    warm = max(1, round(warmup * steps)) if warmup > 0 else 0
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps - warm, 1))
    if not warm:
        return decay
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(opt, [ramp, decay], milestones=[warm])
