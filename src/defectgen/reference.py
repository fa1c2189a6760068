"""The real images synthetic ones are measured against: shared by the sweep and the gate.

For a class at a given image size:
    reference   its val images (held out: nothing generated derives from them), split
                into two disjoint seeded halves: the sweep chooses its cell on one
                ("sweep"), the gate judges on the other ("gate"), so no val image both
                picks the settings and judges their result
    train       the images generation learned from (finetune.data: subset or train),
                the real-vs-real baseline, the real manifold, and what near-duplicates
                are measured against
Distances come from core.distances (torch-fidelity): Inception FID when its weights are
available (gate.inception_weights or torch's cache), else the offline EfficientNet-Lite0
Frechet/kernel distances, named fd_effnet_lite0 / kd_effnet_lite0; `Reference.note` says
which and why. Features of real images are cached on disk per (extractor, ids, size), so
the sweep and the gate of one run featurise each real image once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.config import Params
from defectgen.core import distances, neighbours
from defectgen.core.device import runtime
from defectgen.real_images import load_images
from defectgen.seeds import derive_seed

VAL_HALVES = ("sweep", "gate")


def choose_extractor(params: Params, device: torch.device) -> tuple[distances.Extractor, str]:
    """The extractor gate.extractor asks for, and a note on why (shown in the reports)."""
    cfg = params.gate
    if cfg.extractor == distances.EFFNET:
        return distances.make_extractor(distances.EFFNET, weights=None, device=device), "requested"
    weights = distances.inception_weights(cfg.inception_weights)
    if weights is not None or cfg.extractor == distances.INCEPTION:
        ext = distances.make_extractor(distances.INCEPTION, weights=weights, device=device)
        return ext, f"Inception weights {weights}"
    note = (
        "Inception FID weights are not available offline (set gate.inception_weights to a "
        "local copy for standard FID); using the offline EfficientNet-Lite0 distance"
    )
    return distances.make_extractor(distances.EFFNET, weights=None, device=device), note


def pick(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows, chosen by a seeded permutation of the id-sorted rows."""
    rows = sorted(rows, key=lambda r: r["id"])
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(order)]


class Reference:
    """A preprocessed dataset's real images per class, and features of any image set.

    Args:
        params: the run's params (gate: extractor choice; finetune.data: which train rows).
        preprocessed: the preprocess stage's output folder.
        cache_dir: where real-image features are cached (beside a stage's output).
    """

    def __init__(self, params: Params, preprocessed: Path, cache_dir: Path):
        self.params = params
        self.preprocessed = Path(preprocessed)
        self.cache_dir = Path(cache_dir)
        self.extractor, self.note = choose_extractor(params, runtime(params.model).device)
        self.rows = manifest.read_rows(self.preprocessed)
        self.by_id = {r["id"]: r for r in self.rows}

    def val(self, label: str, half: str | None = None) -> list[dict]:
        """The class's val rows; `half` "sweep" or "gate": one of two disjoint halves
        (a seeded permutation of the id-sorted rows; the sweep's half gets the odd one)."""
        rows = sorted(
            (r for r in self.rows if r["label"] == label and r["split"] == "val"),
            key=lambda r: r["id"],
        )
        if half is None:
            return rows
        if half not in VAL_HALVES:
            raise ValueError(f"half {half!r}: one of {VAL_HALVES}")
        order = np.random.default_rng(derive_seed(self.params.seed, "val-halves", label))
        perm = order.permutation(len(rows))
        cut = (len(rows) + 1) // 2
        mine = perm[:cut] if half == "sweep" else perm[cut:]
        return [rows[i] for i in sorted(mine)]

    def train(self, label: str) -> list[dict]:
        whole = self.params.finetune.data == "train"
        return [
            r
            for r in self.rows
            if r["label"] == label and r["split"] == "train" and (whole or r["in_subset"])
        ]

    def images(self, rows: list[dict], size: int) -> list[np.ndarray]:
        return load_images(self.preprocessed, rows, size)

    def features(self, images: list[np.ndarray]) -> torch.Tensor:
        """Features of in-memory images (synthetic or corrupted: never cached)."""
        return distances.extract(self.extractor, images)

    def real_features(self, rows: list[dict], size: int) -> torch.Tensor:
        """Features of real manifest rows at `size`, cached per (extractor, ids, size)."""
        ids = [r["id"] for r in rows]
        key = hashlib.sha256(json.dumps([self.extractor.name, size, ids]).encode()).hexdigest()
        path = self.cache_dir / f"{key[:24]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        feats = self.features(self.images(rows, size))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(feats, tmp)
        tmp.replace(path)
        return feats

    def gap(self, label: str, size: int) -> float:
        """The typical distance between distinct train images of the class (near-duplicates
        are judged against it): median nearest-neighbour distance of up to max_images."""
        seed = derive_seed(self.params.seed, "gap", label)
        rows = pick(self.train(label), self.params.gate.max_images, seed)
        return neighbours.nearest_gap(self.real_features(rows, size))

    def learned_from(self, label: str, synthetic: list[dict]) -> list[dict]:
        """The real images a class's synthetic images could copy: its train images
        (finetune.data) plus any recorded parent outside them, id-sorted."""
        rows = {r["id"]: r for r in self.train(label)}
        for r in synthetic:
            if r["parent_id"] in self.by_id:
                rows.setdefault(r["parent_id"], self.by_id[r["parent_id"]])
        return sorted(rows.values(), key=lambda r: r["id"])

    def near_duplicates(
        self, label: str, synthetic: list[dict], features: torch.Tensor, *, size: int, gap: float
    ) -> torch.Tensor:
        """(N,) bool: synthetic row i (features row i) is a near-copy of the nearest image
        it could have learned from (core.neighbours.near_duplicates): its parent or any other
        train image, so txt2img and ControlNet outputs are checked too."""
        learned = self.real_features(self.learned_from(label, synthetic), size)
        return neighbours.near_duplicates(
            features, learned, gap=gap, ratio=self.params.gate.near_duplicate
        )
