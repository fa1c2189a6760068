"""core/distances: torch-fidelity distances on the offline EfficientNet-Lite0 features,
checked on real steel images from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from defectgen.core import distances
from defectgen.errors import ConfigError
from tests.conftest import shared_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def extractor() -> distances.Extractor:
    return distances.make_extractor(distances.EFFNET, weights=None, device=CPU)


@pytest.fixture(scope="module")
def scratches() -> list[np.ndarray]:
    """60 real NEU-DET 'scratches' images, grey, 128 px."""
    paths = sorted((shared_data("neu-det") / "images").glob("scratches_*.jpg"))[:60]
    return [np.asarray(Image.open(p).convert("L").resize((128, 128))) for p in paths]


def test_offline_extractor_loads_the_wheel_weights(extractor, monkeypatch):
    path = distances.effnet_weights_path()
    assert path.is_file() and path.stat().st_size > 18_000_000
    model = extractor.module.model
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert (extractor.fd_name, extractor.kd_name) == ("fd_effnet_lite0", "kd_effnet_lite0")


def test_identical_sets_are_at_distance_zero(extractor, scratches):
    f = distances.extract(extractor, scratches[:30])
    assert f.shape == (30, 1280)
    assert abs(distances.frechet(f, f)) < 1e-3
    # KID's unbiased estimator is not exactly 0 for a set against itself (the cross term
    # keeps the diagonal), but far below what mild noise does to the same images.
    rng = np.random.default_rng(1)
    noisy = [
        np.clip(x + rng.normal(0, 15, x.shape), 0, 255).astype(np.uint8) for x in scratches[:30]
    ]
    assert (
        abs(distances.kernel(f, f, subsets=5)[0])
        < distances.kernel(f, distances.extract(extractor, noisy), subsets=5)[0] / 3
    )


def test_distance_grows_along_a_noise_ladder(extractor, scratches):
    a, b = scratches[:30], scratches[30:]
    fa = distances.extract(extractor, a)
    rng = np.random.default_rng(0)
    fd, kd = [], []
    for sigma in (0, 15, 40, 80):
        noisy = [np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8) for x in b]
        fn = distances.extract(extractor, noisy)
        fd.append(distances.frechet(fa, fn))
        kd.append(distances.kernel(fa, fn, subsets=20)[0])
    assert fd == sorted(fd) and fd[0] > 1.0  # real-vs-real is not zero, noise makes it worse
    assert kd == sorted(kd)


def test_kernel_distance_works_with_ten_images(extractor, scratches):
    fa = distances.extract(extractor, scratches[:10])
    fb = distances.extract(extractor, scratches[10:20])
    mean, std = distances.kernel(fa, fb, subsets=10)
    assert np.isfinite(mean) and np.isfinite(std)


def test_inception_without_weights_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError, match="cannot download"):
        distances.make_extractor(distances.INCEPTION, weights=None, device=CPU)
    with pytest.raises(ConfigError, match="not found; download"):
        distances.make_extractor(distances.INCEPTION, weights=tmp_path / "missing.pth", device=CPU)
