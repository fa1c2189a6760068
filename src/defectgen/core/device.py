"""The one device/dtype policy: where every model runs and in which precision.

Every stage resolves `model.device` / `model.dtype` once with `runtime(params.model)`
and hands the `Runtime` to the code that trains or infers: the diffusion models, the
ControlNet, the mask producer, classifiers, segmenters and feature extractors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from defectgen.config import ModelConfig
from defectgen.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """The one device/dtype policy every model follows.

    - frozen weights (the base, a feature extractor) live on `device` in `dtype`;
    - trainable weights (VAE/UNet pretraining, TI rows, LoRA, ControlNet, classifiers,
      segmenters, the mask producer) live on `device` in float32;
    - every forward pass runs under `autocast`, which is on for any dtype but float32,
      on CPU too: a CPU bf16 run exercises the same casts as a CUDA one.
    """

    device: torch.device
    dtype: torch.dtype

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision in `dtype` whenever it is not float32 (CUDA or CPU); for float32
        no autocast context at all (nothing to cast, and none to enter every step)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def runtime(cfg: ModelConfig) -> Runtime:
    """Resolve model.device / model.dtype: auto = CUDA with bf16 when present, else CPU float32."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError(
            "model.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    device = torch.device(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    )
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("model.dtype = 'float16' is not supported on CPU; use float32 or auto")
    return Runtime(device, dtype)


CPU = Runtime(torch.device("cpu"), torch.float32)  # the default of pure-CPU helpers and tests


class LossBuffer:
    """Per-step losses kept on the device and read back in one transfer per `every`
    steps: a `.item()` per step would stall the GPU at every step. Use as a context
    manager (the tail is flushed on exit); `log` still receives every step's loss."""

    def __init__(self, log: Callable[[int, float], None], every: int = 50) -> None:
        self.log, self.every = log, every
        self.pending: list[tuple[int, torch.Tensor]] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss.detach()))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            values = torch.stack([v.float() for _, v in self.pending]).cpu().tolist()
            for (step, _), value in zip(self.pending, values, strict=True):
                self.log(step, value)
            self.pending = []

    def __enter__(self) -> LossBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
