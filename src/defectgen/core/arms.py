"""The conditions of a value comparison and the controls matched to each synthetic arm.

A synthetic arm adds generated images (or pairs) to the few-shot real set. Its gain is
read against controls that add the same number of images per class, trained for the
same number of optimizer steps on the same seeds:

    real                     the few-shot subset alone
    <arm>                    real+synthetic (gate-passed) or real+ungated (all generated)
    real+classical[-ungated] + as many classically augmented subset images per class
    real+oracle[-ungated]    + as many *real* train images from outside the subset per
                             class: what a perfect generator would add
    real+copy-paste[-ungated] (segment, detect) + as many real defects per class cut
                             from subset pairs and pasted onto other subset images
                             (core.copypaste): the model-free synthesis control
    all-train                the whole train split (the upper bound of this budget)
    majority                 no training: always the subset's most frequent class

The `-ungated` suffix names the controls matched to real+ungated, whose counts differ
from real+synthetic's when the gate drops images. The stages (train, segment) decide
which arms run; this module only names conditions and draws matched images.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

# The one vocabulary of conditions: every other module imports these names.
REAL = "real"
GATED = "real+synthetic"  # + the gate-passed synthetic images
UNGATED = "real+ungated"  # + every generated image, ignoring the gate
SUBSTITUTION = "substitution"  # train images outside the subset replaced by gated ones
ALL_TRAIN = "all-train"
MAJORITY = "majority"
ADDITIVE = (GATED, UNGATED)  # arms that add images: each gets controls
# the arms whose comparisons are claims about synthetic data: one Holm family per metric
SYNTHETIC = (*ADDITIVE, SUBSTITUTION)


def classical_of(arm: str) -> str:
    return "real+classical" + ("" if arm == GATED else "-ungated")


def oracle_of(arm: str) -> str:
    return "real+oracle" + ("" if arm == GATED else "-ungated")


def copy_paste_of(arm: str) -> str:
    return "real+copy-paste" + ("" if arm == GATED else "-ungated")


ORACLES = tuple(oracle_of(a) for a in ADDITIVE)


COPY_PASTE = tuple(copy_paste_of(a) for a in ADDITIVE)  # the copy-paste controls


def plan(arms: list[str], *, oracle: bool, copy_paste: bool = False) -> dict[str, str | None]:
    """Every condition to run, in table order, mapped to the arm it is matched to (None
    for real, the arms themselves, all-train and majority)."""
    out: dict[str, str | None] = {REAL: None}
    for arm in arms:
        out[arm] = None
        if arm in ADDITIVE:
            out[classical_of(arm)] = arm
            if copy_paste:
                out[copy_paste_of(arm)] = arm
            if oracle:
                out[oracle_of(arm)] = arm
    if oracle:
        out[ALL_TRAIN] = None
    out[MAJORITY] = None
    return out


def questions(plan: dict[str, str | None], trained: set[str]) -> list[tuple[str, str]]:
    """The (arm, control) pairs a comparison table answers, among trained conditions:
    every condition vs real; each synthetic arm vs its classical, copy-paste and oracle
    arms; each oracle vs its classical arm (is there a gain to capture at all?);
    substitution vs all-train (do synthetic images stand in for the real ones they
    replace?)."""
    out = []
    for name, matched in plan.items():
        if name in (REAL, MAJORITY) or name not in trained:
            continue
        out.append((name, REAL))
        if name in ADDITIVE:
            out += [
                (name, classical_of(name)),
                (name, copy_paste_of(name)),
                (name, oracle_of(name)),
            ]
        if name == SUBSTITUTION:
            out.append((name, ALL_TRAIN))
        if matched is not None and name == oracle_of(matched):
            out.append((name, classical_of(matched)))
    return [(a, c) for a, c in out if c in trained]


def skip_reason(
    name: str,
    plan: dict[str, str | None],
    added: dict[str, list],
    *,
    has_outside: bool,
    items: str,
    item: str,
    all_in_subset: str,
) -> str | None:
    """Why condition `name` of `plan` cannot be trained, or None: an arm that adds no
    `items` (none passed the gate), a control whose matched arm adds no `item`, an
    oracle or all-train arm without real data outside the subset (`all_in_subset`)."""
    matched = plan[name]
    if name in added and not added[name]:
        return f"no {items}" + (" passed the gate" if name == GATED else "")
    if matched is not None and not added[matched]:
        return f"{matched} adds no {item} to match"
    if name == ALL_TRAIN or (matched is not None and name == oracle_of(matched)):
        return None if has_outside else all_in_subset
    return None


def per_class(rows: list[dict]) -> dict[str, int]:
    """How many rows each label has."""
    return dict(Counter(r["label"] for r in rows))


def draw_classical(
    subset: list[dict], counts: dict[str, int], rng: np.random.Generator
) -> list[dict]:
    """Per class `counts[label]` source images from the subset for classical copies:
    whole shuffled passes over the class's images, so every image is used as evenly as
    the count allows (a source image is repeated only after all were used)."""
    picked = []
    for label, k in counts.items():
        own = [r for r in subset if r["label"] == label]
        if not own or k <= 0:
            continue
        picked += [own[i] for i in passes(len(own), k, rng)]
    return picked


def passes(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices into n items in whole shuffled passes: an item repeats only after every
    item was used."""
    return np.concatenate([rng.permutation(n) for _ in range(-(-k // n))])[:k]


def draw_oracle(
    outside: list[dict], counts: dict[str, int], rng: np.random.Generator
) -> tuple[list[dict], dict[str, int]]:
    """Per class `counts[label]` distinct real train images from outside the subset, and
    per class how many were missing (fewer outside images than the arm adds)."""
    picked, short = [], {}
    for label, k in counts.items():
        own = [r for r in outside if r["label"] == label]
        take = min(k, len(own))
        picked += [own[i] for i in sorted(rng.choice(len(own), take, replace=False))]
        if take < k:
            short[label] = k - take
    return picked, short
