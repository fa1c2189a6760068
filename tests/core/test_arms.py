"""core/arms: the one vocabulary of conditions (no other module of src spells a condition
out), the plan of conditions and their questions, and the matched draws."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import numpy as np

from defectgen.core import arms

SRC = Path(__file__).resolve().parents[2] / "src" / "defectgen"
# every condition name but "real", which is also a manifest origin (real / synthetic)
CONDITION = re.compile(r"^(real\+[a-z-]+|all-train|majority|substitution)$")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def _spelled_out(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, value) of every condition name written as a string literal, prose aside."""
    prose = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in prose
        and CONDITION.match(node.value)
    ]


def test_no_module_but_arms_spells_a_condition_out():
    """A condition named as a string literal anywhere else would drift from the
    vocabulary; prose (docstrings) may name them."""
    found = [
        f"{path.relative_to(SRC)}:{line} {value!r}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "core" / "arms.py"
        for line, value in _spelled_out(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == []


def test_the_check_catches_a_spelled_out_condition():
    code = (
        'def f():\n    """real+synthetic in prose is fine."""\n    return "real+oracle", "real"\n'
    )
    assert _spelled_out(ast.parse(code)) == [(3, "real+oracle")]


def test_each_additive_arm_gets_its_own_matched_controls():
    plan = arms.plan([arms.GATED, arms.UNGATED, arms.SUBSTITUTION], oracle=True, copy_paste=True)
    assert plan == {
        "real": None,
        "real+synthetic": None,
        "real+classical": "real+synthetic",
        "real+copy-paste": "real+synthetic",
        "real+oracle": "real+synthetic",
        "real+ungated": None,
        "real+classical-ungated": "real+ungated",
        "real+copy-paste-ungated": "real+ungated",
        "real+oracle-ungated": "real+ungated",
        "substitution": None,
        "all-train": None,
        "majority": None,
    }
    plain = arms.plan([arms.GATED], oracle=False)
    assert list(plain) == ["real", "real+synthetic", "real+classical", "majority"]


def test_questions_are_asked_only_among_trained_conditions():
    plan = arms.plan([arms.GATED, arms.SUBSTITUTION], oracle=True)
    trained = {
        "real",
        "real+synthetic",
        "real+classical",
        "real+oracle",
        "all-train",
        "substitution",
    }
    assert arms.questions(plan, trained) == [
        ("real+synthetic", "real"),
        ("real+synthetic", "real+classical"),
        ("real+synthetic", "real+oracle"),
        ("real+classical", "real"),
        ("real+oracle", "real"),
        ("real+oracle", "real+classical"),
        ("substitution", "real"),
        ("substitution", "all-train"),
        ("all-train", "real"),
    ]
    # the gated arm did not train (nothing passed): nothing is asked of it
    assert ("real+synthetic", "real") not in arms.questions(plan, trained - {"real+synthetic"})


def test_a_condition_that_cannot_train_says_why():
    plan = arms.plan([arms.GATED], oracle=True)
    reason = dict(items="synthetic images", item="image", all_in_subset="the subset is all")
    added = {"real+synthetic": []}
    assert arms.skip_reason("real+synthetic", plan, added, has_outside=True, **reason) == (
        "no synthetic images passed the gate"
    )
    assert arms.skip_reason("real+classical", plan, added, has_outside=True, **reason) == (
        "real+synthetic adds no image to match"
    )
    added = {"real+synthetic": [1, 2]}
    assert arms.skip_reason("real+oracle", plan, added, has_outside=False, **reason) == (
        "the subset is all"
    )
    assert arms.skip_reason("real+oracle", plan, added, has_outside=True, **reason) is None


def test_classical_sources_repeat_only_after_every_image_was_used():
    subset = [{"label": "a", "id": i} for i in range(3)] + [{"label": "b", "id": 9}]
    picked = arms.draw_classical(subset, {"a": 7, "b": 2}, np.random.default_rng(0))
    uses = Counter(r["id"] for r in picked if r["label"] == "a")
    assert sorted(uses.values()) == [2, 2, 3] and sum(r["label"] == "b" for r in picked) == 2


def test_the_oracle_draws_distinct_outside_images_and_counts_the_shortfall():
    outside = [{"label": "a", "id": i} for i in range(4)]
    picked, short = arms.draw_oracle(outside, {"a": 6}, np.random.default_rng(0))
    assert sorted(r["id"] for r in picked) == [0, 1, 2, 3] and short == {"a": 2}
