from collections import Counter

from defectgen.core.split import assign_split, assign_splits, select_subset


def _keys(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_split_is_deterministic_and_seeded():
    keys = _keys(500)
    a = assign_splits(keys, seed=1, train=0.8, val=0.1)
    assert a == assign_splits(keys, seed=1, train=0.8, val=0.1)
    assert a != assign_splits(keys, seed=2, train=0.8, val=0.1)


def test_split_proportions_close_to_fractions():
    counts = Counter(assign_splits(_keys(5000), seed=3, train=0.8, val=0.1))
    assert abs(counts["train"] / 5000 - 0.8) < 0.02
    assert abs(counts["val"] / 5000 - 0.1) < 0.015
    assert abs(counts["test"] / 5000 - 0.1) < 0.015


def test_adding_images_never_moves_existing_ones():
    old = _keys(300)
    before = dict(zip(old, assign_splits(old, seed=5, train=0.8, val=0.1), strict=True))
    grown = old + _keys(700, prefix="new")
    after = dict(zip(grown, assign_splits(grown, seed=5, train=0.8, val=0.1), strict=True))
    assert all(after[k] == before[k] for k in old)
    assert assign_split("img0", seed=5, train=0.8, val=0.1) == before["img0"]


def test_subset_by_alpha_is_per_class_and_nested():
    keys = _keys(100)
    labels = ["a"] * 60 + ["b"] * 40
    s4 = select_subset(keys, labels, seed=9, alpha=0.4)
    s6 = select_subset(keys, labels, seed=9, alpha=0.6)
    picked = Counter(lab for lab, keep in zip(labels, s4, strict=True) if keep)
    assert picked == {"a": 24, "b": 16}
    assert all(b for a, b in zip(s4, s6, strict=True) if a)  # alpha 0.4 within 0.6
    assert sum(s6) == 60


def test_subset_per_class_and_groups_move_together():
    keys = ["g1", "g1", "g2", "g3", "g4"]  # g1 is one image cut into two tiles
    labels = ["a"] * 5
    chosen = select_subset(keys, labels, seed=1, per_class=2)
    assert chosen[0] == chosen[1]
    assert len({k for k, c in zip(keys, chosen, strict=True) if c}) == 2
