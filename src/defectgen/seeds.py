"""Seeds derived from the run seed: stable and independent per class, image and purpose."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and names (class, image index): stable, independent."""
    blob = json.dumps([seed, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def parent_order(seed: int, label: str, n: int) -> np.ndarray:
    """The seeded order in which a class's n parents are used (image i: order[i % n])."""
    return np.random.default_rng(derive_seed(seed, "parents", label)).permutation(n)
