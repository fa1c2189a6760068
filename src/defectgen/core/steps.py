"""Training length as optimizer steps: the equal budget of every comparison.

A condition with more images must not get more updates than its control, so the
training loops (core.classify, core.segment) run a fixed number of steps over a stream
of fresh permutations instead of a number of epochs.
"""

from __future__ import annotations

import torch


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
