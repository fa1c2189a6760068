"""What the base, finetune and generate stages share at the path level: which real images
they may read, how they open the base model, seeds, and loss-curve files.

Only train-split images are ever read here (the subset, or all of train, per params):
val and test never reach a model that generates images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from diffusers import StableDiffusionPipeline

from defectgen import manifest
from defectgen.config import Params
from defectgen.core.diffusion import models
from defectgen.core.images import ImageProblem, decode_image, resize
from defectgen.errors import DataError

BASE_JSON = "base.json"
CHOSEN_JSON = "chosen.json"  # the sweep stage's per-class strength and guidance
CURVES_DIR = "curves"  # <series>.csv with columns step, loss (DVC plots, MLflow)


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


def read_base(base_dir: Path) -> dict:
    """The base stage's record: profile, source, revision, fingerprint, image size."""
    path = Path(base_dir) / BASE_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; pass the base stage's output folder as --base")
    return json.loads(path.read_text(encoding="utf-8"))


def read_chosen(sweep_dir: Path, labels: list[str]) -> dict[str, dict]:
    """The sweep stage's chosen (strength, guidance) per class; every label must be there."""
    path = Path(sweep_dir) / CHOSEN_JSON
    if not path.is_file():
        raise DataError(f"{path}: missing; pass the sweep stage's output folder as --sweep")
    classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    missing = sorted(set(labels) - set(classes))
    if missing:
        raise DataError(
            f"{path}: no chosen settings for classes {missing}; re-run the sweep stage on "
            "the same adapters"
        )
    return classes


def open_base(base_dir: Path, params: Params, rt: models.Runtime) -> StableDiffusionPipeline:
    """A fresh, frozen copy of the base model recorded by the base stage.

    The tiny base lives inside the base stage's folder in SD1.5's on-disk layout; an
    sd15 base is loaded from its own folder or hub id. Same loader either way.
    """
    record = read_base(base_dir)
    if record["profile"] != params.model.profile:
        raise DataError(
            f"{base_dir}: built for profile {record['profile']!r} but params say "
            f"{params.model.profile!r}; re-run the base stage"
        )
    source = record["source"]
    if record["profile"] == "tiny":
        source = Path(base_dir) / source
    models.quiet()
    pipe = models.load_pipeline(source, revision=record.get("revision"), rt=rt)
    check_fingerprint(base_dir, record, pipe)
    return models.prepare(pipe, params.model)


_VERIFIED: set[tuple[str, str, str]] = set()  # (base dir, fingerprint, dtype) checked here


def check_fingerprint(base_dir: Path, record: dict, pipe: StableDiffusionPipeline) -> None:
    """The loaded weights must be the ones the base stage recorded (a hub revision that
    moved, an edited checkpoint folder, another pod's cache): sha256 over every weight,
    once per process for a base folder and dtype. Raises DataError on a mismatch."""
    key = (str(Path(base_dir).resolve()), record["fingerprint"], str(pipe.unet.dtype))
    if key in _VERIFIED:
        return
    found = models.fingerprint(pipe)
    if found != record["fingerprint"]:
        raise DataError(
            f"{base_dir}: the base model loaded from {record['source']!r} (revision "
            f"{record.get('revision')}) has weights fingerprint {found[:16]}, but the base stage "
            f"recorded {record['fingerprint'][:16]}: the weights changed since the base stage "
            "ran (a hub revision that moved, an edited checkpoint, another model.dtype). Pin "
            "model.revision to a commit and re-run the base stage"
        )
    _VERIFIED.add(key)


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
