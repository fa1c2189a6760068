"""One module per stage, each with run(params, *, <input folders>, out_dir) -> metrics.

transformers and diffusers import torchvision, which must be made importable first
(see _torchvision_compat); doing it here covers every stage module, whatever it
imports first.
"""

from defectgen._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()
