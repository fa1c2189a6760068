"""core.classify's probe: the frozen EfficientNet-Lite0 trunk's feature views, the view
draw in `fit`, and a probe trained on them learning a class difference the trunk sees."""

from __future__ import annotations

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
