"""What stages share below the stage level: derived seeds, reading the real images a
stage may learn from, progress lines and loss-curve files. Light (numpy, no torch
diffusion stack): the classifier stages import it too.

Only train-split images are read by `train_images` (the subset, or all of train, per
params): val and test never reach a model that generates images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from defectgen import manifest
from defectgen.core.images import ImageProblem, decode_image, resize
from defectgen.errors import DataError

CLUSTER_ENV = "DEFECTGEN_CLUSTER"  # set on every task of the compiled KFP pipeline


def in_cluster() -> bool:
    """Whether this process is a task of the compiled pipeline (a pod, or kfp.local)."""
    return os.environ.get(CLUSTER_ENV) == "1"


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and names (class, image index): stable, independent."""
    blob = json.dumps([seed, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def load_images(folder: Path, rows: list[dict], size: int | None = None) -> list[np.ndarray]:
    """The pixels of manifest `rows` stored under `folder`, resized to `size` if given."""
    out = []
    for row in rows:
        path = Path(folder) / row["path"]
        try:
            pixels, _ = decode_image(path.read_bytes())
        except (OSError, ImageProblem) as exc:
            raise DataError(
                f"{path}: cannot decode ({exc}); re-run the stage that wrote it"
            ) from None
        out.append(resize(pixels, size) if size and size != pixels.shape[0] else pixels)
    return out


def train_images(
    preprocessed: Path, *, data: str, classes: list[str] | None = None, size: int | None = None
) -> dict[str, list[tuple[dict, np.ndarray]]]:
    """The real images generation may learn from, per class: (manifest row, uint8 pixels).

    Args:
        preprocessed: the preprocess stage's output folder.
        data: "subset" (train rows in the few-shot subset) or "train" (all train rows).
        classes: restrict to these classes (None: all); an unknown name is an error.
        size: resize to this many pixels square (None: as stored).
    """
    preprocessed = Path(preprocessed)
    rows = manifest.read_rows(preprocessed)
    chosen = [
        r
        for r in rows
        if r["split"] == "train" and r["origin"] == "real" and (data == "train" or r["in_subset"])
    ]
    labels = sorted({r["label"] for r in rows})
    if classes is not None:
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise DataError(
                f"{preprocessed}: classes {unknown} from params are not in the dataset; "
                f"its classes are {labels}"
            )
        labels = [c for c in labels if c in classes]
    out: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for label in labels:
        picked = sorted((r for r in chosen if r["label"] == label), key=lambda r: r["id"])
        if not picked:
            raise DataError(
                f"{preprocessed}: class {label!r} has no {data} images to learn from; "
                "raise preprocess.subset or drop the class via finetune.classes"
            )
        images = list(zip(picked, load_images(preprocessed, picked, size), strict=True))
        out[label] = images
    return out


def parent_order(seed: int, label: str, n: int) -> np.ndarray:
    """The seeded order in which a class's n parents are used (image i: order[i % n])."""
    return np.random.default_rng(derive_seed(seed, "parents", label)).permutation(n)


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
            print(f"[{what}] step {done}/{steps}, loss {value:.4g}, {rate:.1f} steps/s, "
                  f"about {left / 60:.1f} min left", file=sys.stderr, flush=True)  # fmt: skip

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


class Curves:
    """Loss curves of a stage: one CSV per series (`<series>.csv`, columns step, loss) in
    a folder, which dvc.yaml declares as plots and the runner logs to MLflow."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = {}

    def logger(self, series: str):
        values = self.series.setdefault(series, [])
        return lambda step, value: values.append(value)

    def write(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for series, values in self.series.items():
            lines = ["step,loss"] + [f"{i},{v:.6g}" for i, v in enumerate(values)]
            (folder / f"{series}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def extend_from(self, folder: Path) -> None:
        """Add the curves saved in `folder` (a resumed unit's)."""
        for path in sorted(Path(folder).glob("*.csv")):
            with path.open(encoding="utf-8") as fh:
                self.series[path.stem] = [float(row["loss"]) for row in csv.DictReader(fh)]

    def summary(self, series: str) -> dict[str, float]:
        """Steps, mean of the first and last tenth, and minimum of one series."""
        values = self.series.get(series, [])
        if not values:
            return {}
        k = max(1, len(values) // 10)
        return {
            "steps": len(values),
            "first_mean": float(np.mean(values[:k])),
            "last_mean": float(np.mean(values[-k:])),
            "min": float(np.min(values)),
        }
