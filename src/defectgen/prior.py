"""Opening the prior every diffusion stage builds on: the base stage's model (checked
against the fingerprint it recorded) and, for one class, its adapter on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from defectgen.artifacts import AdapterRecord, BaseRecord, read_adapter, read_base
from defectgen.config import Params
from defectgen.core.diffusion import adapt, models, sample
from defectgen.errors import DataError

if TYPE_CHECKING:  # diffusers is imported through core.diffusion (torchvision shim first)
    from diffusers import StableDiffusionPipeline


def open_base(base_dir: Path, params: Params, rt: models.Runtime) -> StableDiffusionPipeline:
    """A fresh, frozen copy of the base model recorded by the base stage.

    The tiny base lives inside the base stage's folder in SD1.5's on-disk layout; an
    sd15 base is loaded from its own folder or hub id. Same loader either way.
    """
    record = read_base(base_dir)
    if record["profile"] != params.model.profile:
        raise DataError(
            f"{base_dir}: built for profile {record['profile']!r} but params say "
            f"{params.model.profile!r}; re-run the base stage"
        )
    source = record["source"]
    if record["profile"] == "tiny":
        source = Path(base_dir) / source
    models.quiet()
    pipe = models.load_pipeline(source, revision=record.get("revision"), rt=rt)
    check_fingerprint(base_dir, record, pipe)
    return models.prepare(pipe, params.model)


_VERIFIED: set[tuple[str, str, str]] = set()  # (base dir, fingerprint, dtype) checked here


def check_fingerprint(base_dir: Path, record: BaseRecord, pipe: StableDiffusionPipeline) -> None:
    """The loaded weights must be the ones the base stage recorded (a hub revision that
    moved, an edited checkpoint folder, another pod's cache): sha256 over every weight,
    once per process for a base folder and dtype. Raises DataError on a mismatch."""
    key = (str(Path(base_dir).resolve()), record["fingerprint"], str(pipe.unet.dtype))
    if key in _VERIFIED:
        return
    found = models.fingerprint(pipe)
    if found != record["fingerprint"]:
        raise DataError(
            f"{base_dir}: the base model loaded from {record['source']!r} (revision "
            f"{record.get('revision')}) has weights fingerprint {found[:16]}, but the base stage "
            f"recorded {record['fingerprint'][:16]}: the weights changed since the base stage "
            "ran (a hub revision that moved, an edited checkpoint, another model.dtype). Pin "
            "model.revision to a commit and re-run the base stage"
        )
    _VERIFIED.add(key)


def open_class(
    params: Params, base: Path, adapter_dir: Path, rt: models.Runtime, *, mode: str
) -> tuple[StableDiffusionPipeline, AdapterRecord]:
    """The generation pipeline (`mode`: img2img | txt2img) of the base with one class's
    adapter applied, and the adapter's record (label, token, prompt, resolution, id)."""
    adapter = read_adapter(adapter_dir)
    pipe = open_base(base, params, rt)
    adapt.load_adapter(pipe, adapter_dir, adapter["token"])
    models.for_sampling(pipe, params.model)
    pipe.text_encoder.to(rt.dtype)
    return sample.sampler(pipe, mode), adapter
