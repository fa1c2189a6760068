"""The comparison harness every value comparison goes through (classifier, segmenter,
detector): what each condition trains on, which (condition, seed) units run, and what
their paired scores may say.

The stages are task adapters around it: they load their images, make a classical copy
of an image (with its mask or boxes), fit one model and score it on the real test split.
What they share lives here, once:

    Pool        each condition's training set for a seed: the few-shot subset plus what
                the condition adds (core.arms's conditions: the synthetic arms' images,
                classical copies, copy-paste sources, real images outside the subset for
                the oracle and all-train, substitutes), or why it cannot train
    analyse     the paired comparisons in every metric (core.stats: over seeds and test
                images where the task scores per image, else over seeds), one Holm family
                per metric for the synthetic arms, the validity check (core.validity) on
                the primary metric, and the verdicts withheld when it fails
    headline    the answer in one line: the synthetic arm against its classical control

Adding an arm is one change here (and in core.arms's plan); adding a statistic is one
change in `analyse`. No paths, no files: the stages read and write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from defectgen.core import arms, copypaste, stats, validity


@dataclass
class Draw:
    """What one condition adds to the few-shot subset for one seed.

    rows: manifest rows added as they are (synthetic images, real images from outside
        the subset); copies: subset rows to add a classical copy of each (a row may
        repeat); pastes: copy-paste's drawn (defect, background) sources, for the task
        to cut and paste (core.copypaste.make)."""

    rows: list[dict] = field(default_factory=list)
    copies: list[dict] = field(default_factory=list)
    pastes: list | None = None  # core.copypaste.draw's result, for copy-paste controls

    @property
    def n_added(self) -> int:
        return len(self.rows) + len(self.copies) + len(self.pastes or [])


class Pool:
    """The rows a comparison draws its conditions from.

    Args:
        plan: core.arms.plan's conditions, each mapped to the arm it is matched to.
        subset: the few-shot real train rows every condition starts from.
        outside: the real train rows outside the subset (the oracle's and all-train's).
        added: per synthetic arm (real+synthetic, real+ungated), the rows it adds.
        normal_classes: the defect-free classes copy-paste pastes onto.
        items, item: what the task calls an added row, for skip reasons ("synthetic
            pairs", "pair").
    """

    def __init__(
        self,
        plan: dict[str, str | None],
        subset: list[dict],
        outside: list[dict],
        added: dict[str, list[dict]],
        *,
        normal_classes: tuple[str, ...] = (),
        items: str = "synthetic images",
        item: str = "image",
    ):
        self.plan, self.subset, self.outside, self.added = plan, subset, outside, added
        self.normal = set(normal_classes)
        self.items, self.item = items, item

    def reason(self, name: str) -> str | None:
        """Why condition `name` cannot train, or None."""
        if name == arms.SUBSTITUTION:
            gated = self.added.get(arms.GATED, [])
            return None if self.outside and gated else "the gate passed no synthetic image"
        return arms.skip_reason(
            name,
            self.plan,
            self.added,
            has_outside=bool(self.outside),
            items=self.items,
            item=self.item,
            all_in_subset=f"every train {self.item} is in the few-shot subset",
        )

    def runnable(self) -> tuple[list[str], dict[str, str]]:
        """(conditions that train, in plan order; {condition: why not} for the rest). The
        constant predictor (majority) trains nothing and is neither."""
        run, skipped = [], {}
        for name in self.plan:
            if name == arms.MAJORITY:
                continue
            if why := self.reason(name):
                skipped[name] = why
            else:
                run.append(name)
        return run, skipped

    def draw(self, name: str, rng: np.random.Generator) -> Draw:
        """What condition `name` adds for the seed whose generator is `rng` (matched
        controls draw per seed: as many images per class as their arm adds)."""
        matched = self.plan[name]
        if name in (arms.REAL, arms.MAJORITY):
            return Draw()
        if name in self.added:
            return Draw(rows=list(self.added[name]))
        if name == arms.ALL_TRAIN:
            return Draw(rows=list(self.outside))
        if name == arms.SUBSTITUTION:  # outside images replaced by as many passed ones
            gated = self.added[arms.GATED]
            have = arms.per_class(self.outside)
            by_class = {c: [g for g in gated if g["label"] == c] for c in sorted(have)}
            return Draw(rows=[r for c, rows in by_class.items() for r in rows[: have[c]]])
        counts = arms.per_class(self.added[matched])
        if name == arms.classical_of(matched):
            return Draw(copies=arms.draw_classical(self.subset, counts, rng))
        if name == arms.copy_paste_of(matched):
            return Draw(pastes=copypaste.draw(self.subset, counts, self.normal, rng))
        if name == arms.oracle_of(matched):
            return Draw(rows=arms.draw_oracle(self.outside, counts, rng)[0])
        raise ValueError(f"no such condition: {name!r}")

    def oracle_shortfall(self, name: str) -> dict[str, int]:
        """Per class how many images an oracle arm lacks to match its synthetic arm."""
        have, want = arms.per_class(self.outside), arms.per_class(self.added[self.plan[name]])
        return {c: k - have.get(c, 0) for c, k in want.items() if k > have.get(c, 0)}


# Scores: per metric, per condition, per seed.
Scores = dict[str, dict[str, dict[int, float]]]


def analyse(
    scores: Scores,
    plan: dict[str, str | None],
    *,
    primary: str,
    higher: dict[str, bool],
    constant: float,
    bound: dict[str, bool],
    classes_predicted: dict[str, list[int]] | None = None,
    difference: Callable[[str, str, str], dict] | None = None,
) -> tuple[list[dict], dict]:
    """The comparisons a table of trained conditions answers, and its validity record.

    Args:
        scores: per metric compared (the keys of `higher`) and trained condition, the
            test score of each seed.
        plan: the conditions and what each is matched to (core.arms.plan).
        primary: the metric the validity check and the headline read.
        higher: per metric compared, whether higher is better.
        constant: the constant predictor's score on the primary metric.
        bound: per trained condition, whether it is budget-bound (core.validity).
        classes_predicted: per condition and seed, how many classes its model
            predicted (classifiers).
        difference: the paired test of (metric, arm, control) that resamples the test
            images as well as the seeds (core.stats.seed_image_bootstrap); None: the
            seeds' paired t test (a task whose metric is not a mean over images).

    Returns:
        (comparison rows, each with its verdict, or NOT_ALLOWED when the check failed;
        the validity record).
    """
    trained = set(scores[primary])
    asked = arms.questions(plan, trained)
    rows = []
    for metric, better in higher.items():
        test = difference and functools.partial(difference, metric)
        rows += stats.compare(
            scores[metric], asked, metric, better, claims=arms.SYNTHETIC, difference=test
        )
    check = validity.check(
        scores[primary],
        metric=primary,
        constant=constant,
        bound=bound,
        classes_predicted=classes_predicted,
        difference=difference and functools.partial(difference, primary),
    )
    return validity.withhold(rows, check), check


def headline(
    comparisons: list[dict],
    check: dict,
    metric: str,
    what: str,
    *,
    model: str | None = None,
    shown: str | None = None,
    points: bool = True,
) -> str | None:
    """The synthetic arm against its classical control in one line (the gated arm where
    it trained, else the ungated): "<what> (<model>, <arm> vs <control>, N paired seeds
    [x M test images], equal steps): <verdict>; <metric> <difference>", or the validity
    check's statement in place of the finding; None when no such comparison exists."""
    for arm in arms.ADDITIVE:
        for r in comparisons:
            if (r["arm"], r["control"], r["metric"]) != (arm, arms.classical_of(arm), metric):
                continue
            units = f"{r['n_seeds']} paired seeds"
            if r.get("n_images"):
                units += f" x {r['n_images']} test images"
            about = f"{what} ({f'{model}, ' if model else ''}{arm} vs {r['control']}, {units}, "
            finding = f"{r['verdict']}; test {shown or metric} {stats.describe(r, points=points)}."
            return validity.answer(about + "equal steps)", check, finding)
    return None
