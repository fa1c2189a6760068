"""core.classify's probe: the frozen EfficientNet-Lite0 trunk's feature views, the view
draw in `fit`, and a probe trained on them learning a class difference the trunk sees."""

from __future__ import annotations

import pytest
import torch

from defectgen.core import classify
from tests.conftest import stripes


def dataset(n: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = [stripes(start + i, vertical=bool(i % 2)) for i in range(n)]
    return classify.to_batch(images), torch.tensor([i % 2 for i in range(n)])


def test_views_are_the_image_then_seeded_copies_independent_of_the_batch():
    trunk = classify.FrozenTrunk()
    x, _ = dataset(4, 0)
    augment = classify.protocol_augment(10.0, flips=True)
    views = trunk.views(x, augment, 3, seeds=[11, 12, 13, 14])
    assert views.shape == (4, 3, classify.TRUNK_FEATURES)
    torch.testing.assert_close(views[:, 0], trunk(x))  # view 0: the image itself
    assert not torch.allclose(views[:, 1], views[:, 0])  # the copies are augmented
    # an image's views come from its own seed: the same alone, in another order or batch
    alone = trunk.views(x[2:3], augment, 3, seeds=[13])
    reordered = trunk.views(x.flip(0), augment, 3, seeds=[14, 13, 12, 11])
    torch.testing.assert_close(alone[0], views[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reordered.flip(0), views, atol=1e-5, rtol=1e-4)
    assert trunk.views(x, augment, 1, seeds=[0] * 4).shape == (4, classify.TRUNK_FEATURES)


def test_the_view_draw_follows_the_seeded_rng():
    features = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)  # 5 views of 3 numbers
    pick = classify.probe_augment(5)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(torch.stack([pick(features) for _ in range(40)]))
    assert torch.equal(draws[0], draws[1])
    assert len({tuple(row.tolist()) for row in draws[0]}) > 1  # not always the same view
    assert all(any(torch.equal(row, v) for v in features) for row in draws[0])
    assert torch.equal(classify.probe_augment(1)(features[0]), features[0])


def test_a_probe_learns_what_the_frozen_features_separate():
    trunk = classify.FrozenTrunk()
    augment = classify.protocol_augment(10.0, flips=True)
    (x, y), (vx, vy), (tx, ty) = dataset(16, 0), dataset(16, 500), dataset(32, 900)
    train = (trunk.views(x, augment, 4, seeds=list(range(16))), y)
    model = classify.build(classify.EFFNET_PROBE, 2)
    fit = classify.fit(model, train, (trunk(vx), vy), steps=120, evals=4, batch_size=8,
                       lr=1e-2, augment=classify.probe_augment(4), seed=0)  # fmt: skip
    preds = classify.predict(fit.model, trunk(tx))
    assert classify.evaluate(ty.tolist(), preds, ["h", "v"]).accuracy >= 0.9
    assert fit.eval_steps == [30, 60, 90, 120] and fit.best_step in fit.eval_steps


def _overlapping(n_major: int, n_minor: int, gen: torch.Generator) -> tuple:
    """Two Gaussian classes 1.4 sd apart in 2-d: class 0 n_major points, class 1 n_minor."""
    x = torch.cat([torch.randn(n_major, 2, generator=gen),
                   torch.randn(n_minor, 2, generator=gen) + 1.0])  # fmt: skip
    return x, torch.cat(
        [torch.zeros(n_major, dtype=torch.long), torch.ones(n_minor, dtype=torch.long)]
    )


def test_class_balance_lifts_a_1_to_10_train_set_off_the_majority_class():
    gen = torch.Generator().manual_seed(0)
    train, val, test = (
        _overlapping(500, 50, gen),
        _overlapping(200, 20, gen),
        _overlapping(200, 200, gen),
    )
    scores = {}
    for balance in classify.CLASS_BALANCE:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = torch.nn.Linear(2, 2)
        fit = classify.fit(model, train, val, steps=200, evals=10, batch_size=32, lr=1e-2,
                           augment=lambda t: t, seed=1, schedule_kind="cosine", warmup=0.05,
                           select_by="balanced_accuracy", n_classes=2,
                           class_balance=balance)  # fmt: skip
        pred = classify.predict(fit.model, test[0])
        scores[balance] = classify.evaluate(test[1].tolist(), pred, ["fine", "defect"])
    # plain training learns the majority: the defect is almost never predicted
    assert scores["none"].balanced_accuracy < 0.55 and scores["none"].recall["defect"] < 0.1
    for balance in ("weights", "sampler"):
        assert scores[balance].balanced_accuracy > scores["none"].balanced_accuracy + 0.1
        assert scores[balance].recall["defect"] > 0.5


def test_the_sampler_fills_batches_with_each_class_alike():
    # a model that only records what it is shown: the batches' class shares
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            if self.training:
                seen.append(x[:, 0].clone())
            return x + self.w

    x = torch.stack([torch.tensor([float(i < 10), 0.0]) for i in range(110)])  # 10 ones
    y = (x[:, 0] == 1).long()
    for balance, share in (("none", 10 / 110), ("sampler", 0.5)):
        seen.clear()
        classify.fit(Recorder(), (x, y), (x, y), steps=100, evals=1, batch_size=32, lr=1e-3,
                     augment=lambda t: t, seed=2, n_classes=2, class_balance=balance)  # fmt: skip
        assert float(torch.cat(seen).mean()) == pytest.approx(share, abs=0.03)
    with pytest.raises(ValueError, match="class_balance"):
        classify.fit(Recorder(), (x, y), (x, y), steps=1, evals=1, batch_size=4, lr=1e-3,
                     augment=lambda t: t, seed=0, class_balance="oversample")  # fmt: skip


def test_both_trunks_see_small_images():
    # 32 px images: the judge's trunk (Lite2) gave all-zero features before they were
    # upsampled to the trunks' smallest working side
    x, _ = dataset(4, 0)
    assert x.shape[-1] == 32
    for network in ("efficientnet-lite0", "efficientnet-lite2"):
        features = classify.FrozenTrunk(network=network)(x)
        assert features.shape == (4, classify.TRUNK_FEATURES)
        assert features.abs().mean() > 0.1 and features.std(0).mean() > 0.01
