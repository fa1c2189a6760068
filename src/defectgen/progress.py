"""Progress lines on stderr for stages that run over a few seconds: steps of one training
loop (`progress`) and units of a stage (`Units`: classes, training runs). Plain lines, so
that dvc repro, KFP logs and CI show them as they come."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress(
    what: str, steps: int, log: Callable[[int, float], None], *, every_s: float = 30.0
) -> Callable[[int, float], None]:
    """`log` plus a progress line on stderr (what `dvc repro` shows): one before the
    first step, then at most every `every_s` seconds with the loss, the step rate and
    the time left at that rate, and one at the end."""
    started = time.perf_counter()
    last = [started]
    print(f"[{what}] {steps} steps ...", file=sys.stderr, flush=True)

    def wrapped(step: int, value: float) -> None:
        log(step, value)
        now = time.perf_counter()
        done = step + 1
        if now - last[0] >= every_s or done == steps:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            left = (steps - done) / rate
            print(
                f"[{what}] step {done}/{steps}, loss {value:.4g}, {rate:.1f} steps/s, "
                f"about {left / 60:.1f} min left",
                file=sys.stderr,
                flush=True,
            )

    return wrapped


class Units:
    """Progress over a stage's units (classes, training runs): a line on stderr as each
    one finishes, "[what] noun k/N (unit) done in 12.3 s; about 1.5 min left", or
    "... already done" for a resumed one. The time left is the wall time per unit built
    so far in this process times the units still to come, so it holds when units run
    several at a time (Resume.ensure_many's workers). Plain lines, so that dvc repro,
    KFP logs and CI show them as they come."""

    def __init__(self, what: str, noun: str, total: int) -> None:
        self.what, self.noun, self.total = what, noun, total
        self.k = 0
        self.n_built = 0
        self.since: float | None = None  # the wall clock when this process began building

    def tick(self, unit: str, seconds: float | None) -> None:
        self.k += 1
        head = f"[{self.what}] {self.noun} {self.k}/{self.total} ({unit})"
        if seconds is None:
            print(f"{head} already done", file=sys.stderr, flush=True)
            return
        now = time.perf_counter()
        if self.since is None:  # the first unit built here started `seconds` ago
            self.since = now - seconds
        self.n_built += 1
        left = (self.total - self.k) * (now - self.since) / self.n_built
        tail = f"; about {left / 60:.1f} min left" if self.k < self.total else ""
        print(f"{head} done in {seconds:.1f} s{tail}", file=sys.stderr, flush=True)
