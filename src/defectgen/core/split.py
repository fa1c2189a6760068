"""Deterministic, stable train/val/test splits and the few-shot subset.

Each image's split is a pure function of (seed, its group key, the fractions):
a keyed hash maps the key to u in [0, 1), and fixed thresholds on u pick the
split. Adding or removing other images therefore never moves an image between
splits, and the test split stays frozen as long as seed and fractions do.
Every class is cut by the same thresholds on its own hashes, so the split is
stratified in expectation (the per-class counts are reported by preprocess).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

SPLITS = ("train", "val", "test")


def unit_hash(seed: int, salt: str, key: str) -> float:
    """Map (seed, salt, key) to a float uniform in [0, 1), identical on every machine."""
    digest = hashlib.sha256(f"{seed}\x1f{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(key: str, *, seed: int, train: float, val: float) -> str:
    """The split of one group key: train if u < train, val if u < train + val, else test."""
    u = unit_hash(seed, "split", key)
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def assign_splits(keys: Sequence[str], *, seed: int, train: float, val: float) -> list[str]:
    """Splits for many group keys (images that share a key share a split)."""
    return [assign_split(k, seed=seed, train=train, val=val) for k in keys]


def select_subset(
    keys: Sequence[str],
    labels: Sequence[str],
    *,
    seed: int,
    alpha: float | None = None,
    per_class: int | None = None,
) -> list[bool]:
    """Pick the few-shot subset of the training images, per class.

    Within each class the keys are ranked by a keyed hash and the first
    ceil(alpha * n) (or min(per_class, n)) are chosen. Because the ranking does
    not depend on alpha, subsets are nested: the alpha = 0.4 subset is contained
    in the alpha = 0.6 one, which is what substitution experiments need.

    Args:
        keys: one group key per training image (images sharing a key are chosen together).
        labels: the class of each image.
        seed: the run's seed.
        alpha: fraction of each class to keep, in (0, 1].
        per_class: count of groups to keep per class (exactly one of alpha/per_class).

    Returns:
        One bool per input: whether that image is in the subset.
    """
    if (alpha is None) == (per_class is None):
        raise ValueError("select_subset needs exactly one of alpha and per_class")
    if len(keys) != len(labels):
        raise ValueError(f"keys ({len(keys)}) and labels ({len(labels)}) differ in length")
    by_class: dict[str, list[str]] = {}
    for key, label in zip(keys, labels, strict=True):
        groups = by_class.setdefault(label, [])
        if key not in groups:
            groups.append(key)
    chosen: set[tuple[str, str]] = set()
    for label, groups in by_class.items():
        ranked = sorted(groups, key=lambda k: unit_hash(seed, "subset", k))
        n = math.ceil(alpha * len(ranked)) if alpha is not None else min(per_class, len(ranked))
        chosen.update((label, k) for k in ranked[:n])
    return [(label, key) in chosen for key, label in zip(keys, labels, strict=True)]
