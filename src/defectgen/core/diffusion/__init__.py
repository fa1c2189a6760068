"""Diffusion models: base-model builders, tiny-base pretraining, StableSDG adaptation
(textual inversion + LoRA) and image-oriented generation.

Importing this package makes torchvision importable first (see _torchvision_compat),
because transformers and diffusers import it.
"""

from defectgen._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()
