"""Class adapters in the MLflow model registry, and who is champion.

Each class's adapter (learned embedding + LoRA, with a reference to its base) is logged
as an MLflow pyfunc model: loading it loads the base, applies the adapter, and
`predict` generates images from given init images (image-oriented generation at the
class's chosen strength and guidance unless the call overrides them). The tiny base is
bundled with the model (about 10 MB); an sd15 base is referenced by its path or hub id.

Registered name: `defectgen.<dataset>.<class>` (characters outside [A-Za-z0-9_.-]
become '-'). Version tags: the gate metric's name and value, verdict, params hash,
data hash, pipeline key, adapter id.

Only adapters the gate passed are registered, so a model's `latest` is never one it
failed (registry.json and the stage's MLflow run keep the failed ones' verdicts). Each
is logged from code (adapter_model.py: loading runs no pickled object) with a signature
(the image column, an optional seed, the class's chosen settings as parameter defaults)
and a description saying what it is and how to load it.

Promotion when a version is registered (a class the gate passed):
    no champion yet                           alias `champion`
    superior on val, the champion was not     `champion` moves to it (its images beat as
                                              many classical copies: SUPERIOR_TAG)
    as superior as the champion, lower
    distance on the same basis                `champion` moves to it
    otherwise                                 alias `challenger`
Distances are compared only between versions scored on the same basis (the gate
metric, the reference images' digest and the compared count: BASIS_TAG); a passing
version on another basis than the champion's becomes `challenger` unless it is superior
where the champion was not, and the register stage says why it was not compared.
Registering the same adapter with the same verdict and distance again (re-running a
pipeline) returns the existing version: no duplicates.
`rollback` moves `champion` back to the version it replaced (a history kept as a
registered-model tag).

With tracking.py, the only module that imports mlflow.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402  (the environment above must be set first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models.signature import ModelSignature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema  # noqa: E402
from PIL import Image  # noqa: E402

from defectgen.errors import ConfigError  # noqa: E402

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "defectgen.champion_history"
KEY_TAG = "defectgen.pipeline_key"
DISTANCE_TAG = "defectgen.distance"
SUPERIOR_TAG = "defectgen.superior"  # "true": better than classical copies on val
BASIS_TAG = "defectgen.distance_basis"  # metric|reference digest|compared count


def model_name(dataset: str, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"defectgen.{dataset}.{label}")


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class AdapterModel(mlflow.pyfunc.PythonModel):
    """pyfunc: input DataFrame with `image` (PNG/JPEG bytes) and optional `seed`;
    params strength, guidance, steps override the class's chosen settings; output
    DataFrame with `image` (PNG bytes of the generated image)."""

    def load_context(self, context) -> None:
        from defectgen.config import ModelConfig
        from defectgen.core.diffusion import adapt, models, sample

        cfg = context.model_config
        source = context.artifacts.get("base") or cfg["base_source"]
        model_cfg = ModelConfig()
        rt = models.runtime(model_cfg)
        models.quiet()
        pipe = models.load_pipeline(source, revision=cfg.get("base_revision"), rt=rt)
        models.prepare(pipe, model_cfg)  # frozen, SDPA attention; compiled on CUDA
        adapt.load_adapter(pipe, Path(context.artifacts["adapter"]), cfg["token"])
        models.for_sampling(pipe, model_cfg)  # served as generate samples: LoRA fused in
        pipe.text_encoder.to(rt.dtype)
        self.sampler = sample.sampler(pipe, "img2img")
        self.cfg = cfg

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        from defectgen.core.diffusion import sample
        from defectgen.core.images import decode_image, resize

        params = {**self.cfg["defaults"], **(params or {})}
        size, channels = self.cfg["resolution"], self.cfg["channels"]
        parents = [resize(decode_image(bytes(b))[0], size) for b in model_input["image"]]
        if channels == 1:
            parents = [
                p if p.ndim == 2 else np.asarray(Image.fromarray(p).convert("L")) for p in parents
            ]  # noqa: E501
        seeds = (
            [int(s) for s in model_input["seed"]]
            if "seed" in model_input
            else list(range(len(parents)))
        )
        images = sample.generate(
            self.sampler,
            prompt=self.cfg["prompt"],
            seeds=seeds,
            parents=parents,
            strength=float(params["strength"]),
            guidance=float(params["guidance"]),
            steps=int(params["steps"]),
            size=size,
            channels=channels,
        )
        return pd.DataFrame({"image": [_png(x) for x in images]})


def _versions(client: MlflowClient, name: str) -> list:
    try:
        return client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _make_champion(client: MlflowClient, name: str, version: str) -> None:
    history = _history(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
    challenger = _alias_version(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def promote_by_gate(client: MlflowClient, name: str, version: str) -> tuple[str | None, str]:
    """Apply the promotion rules to a freshly registered (gate-passed) version: (its
    alias, why)."""
    mv = client.get_model_version(name, version)
    distance = float(mv.tags[DISTANCE_TAG])
    champion = _alias_version(client, name, CHAMPION)
    if champion is None:
        _make_champion(client, name, version)
        return CHAMPION, "the first passing version"
    superior = mv.tags.get(SUPERIOR_TAG) == "true"
    if superior and champion.tags.get(SUPERIOR_TAG) != "true":
        _make_champion(client, name, version)
        return CHAMPION, (
            f"superior on val (its images beat as many classical copies); champion "
            f"v{champion.version} was not"
        )
    if not superior and champion.tags.get(SUPERIOR_TAG) == "true":
        client.set_registered_model_alias(name, CHALLENGER, version)
        return CHALLENGER, f"champion v{champion.version} is superior on val; this one is not"
    basis, theirs = mv.tags.get(BASIS_TAG), champion.tags.get(BASIS_TAG)
    if basis is None or basis != theirs:
        client.set_registered_model_alias(name, CHALLENGER, version)
        return CHALLENGER, (
            f"not compared with champion v{champion.version}: its distance was measured on "
            f"another basis ({theirs or 'not recorded'} vs {basis or 'not recorded'}: "
            "metric|reference digest|count); promote by hand if it is better"
        )
    champion_distance = float(champion.tags[DISTANCE_TAG])
    if distance < champion_distance:
        _make_champion(client, name, version)
        return CHAMPION, f"distance {distance:.4g} < champion v{champion.version}'s"
    client.set_registered_model_alias(name, CHALLENGER, version)
    return CHALLENGER, f"distance {distance:.4g} >= champion v{champion.version}'s"


def register_adapter(
    *,
    name: str,
    adapter_dir: Path,
    base_dir: Path | None,
    base_source: str | None,
    model_config: dict,
    tags: dict[str, str],
) -> tuple[str, str | None, bool, str]:
    """Log one adapter as a pyfunc model in the active run, register it, promote it.

    Returns:
        (version, alias or None, created, why): created is False when the same adapter
        with the same verdict and distance is registered already (a re-run of the same
        pipeline, or a `dvc repro` with nothing changed): its version is returned. `why`
        says how the alias was decided.
    """
    client = MlflowClient()
    same_keys = ("defectgen.adapter_id", "defectgen.verdict", DISTANCE_TAG)
    for mv in _versions(client, name):
        if all(mv.tags.get(k) == tags[k] for k in same_keys):
            aliases = [a for a in (CHAMPION, CHALLENGER) if a in (mv.aliases or [])]
            alias = aliases[0] if aliases else None
            return str(mv.version), alias, False, "registered already"
    artifacts = {"adapter": str(adapter_dir)}
    if base_dir is not None:
        artifacts["base"] = str(base_dir)
    label = name.rsplit(".", 1)[-1]
    with (
        mlflow.start_run(run_name=f"adapter {label}", nested=True),  # one run per model
        warnings.catch_warnings(),
    ):
        # No input example: MLflow would load the model and generate with it to check
        # the example at log time (the whole base on the GPU for sd15); the signature
        # states the columns and parameters.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=f"adapter-{label}",
            python_model=str(Path(__file__).with_name("adapter_model.py")),
            artifacts=artifacts,
            model_config={**model_config, "base_source": base_source},
            signature=signature(model_config["defaults"]),
            pip_requirements=["torch", "diffusers", "transformers", "peft", "defectgen"],
        )
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    version = str(mv.version)
    alias, why = promote_by_gate(client, name, version)
    client.update_registered_model(
        name,
        description=f"defectgen: synthetic images of class '{label}' (a textual-"
        "inversion + LoRA adapter on its base). Serve the version aliased champion: "
        f"mlflow.pyfunc.load_model('models:/{name}@champion').",
    )
    client.update_model_version(name, version, description=describe(tags, model_config, why))
    return version, alias, True, why


def signature(defaults: dict) -> ModelSignature:
    """Input: `image` (PNG/JPEG bytes of an init image) and an optional `seed`; output:
    `image` (PNG bytes); parameters strength, guidance, steps defaulting to the class's
    chosen settings."""
    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("binary", "image")]),
        params=ParamSchema(
            [
                ParamSpec("strength", "double", float(defaults["strength"])),
                ParamSpec("guidance", "double", float(defaults["guidance"])),
                ParamSpec("steps", "long", int(defaults["steps"])),
            ]
        ),
    )


def describe(tags: dict[str, str], model_config: dict, why: str) -> str:
    """A version's description: what the gate measured, its settings, its alias's why."""
    d = model_config["defaults"]
    return (
        f"Gate: pass, {tags['defectgen.gate_metric']} {tags[DISTANCE_TAG] or '-'}. Base "
        f"{tags['defectgen.base']}. Generates {model_config['resolution']} px images from init "
        f"images at strength {d['strength']:g}, guidance {d['guidance']:g}, {d['steps']} "
        f"steps (parameters of predict). Promotion: {why}."
    )


def list_models(client: MlflowClient | None = None) -> list[dict]:
    """Every defectgen model: its latest version, champion and challenger with their
    distance (None where there is no such alias)."""
    client = client or MlflowClient()
    out = []
    for rm in client.search_registered_models("name LIKE 'defectgen.%'"):
        versions = _versions(client, rm.name)
        row = {"name": rm.name, "latest": max((int(v.version) for v in versions), default=None)}
        for alias in (CHAMPION, CHALLENGER):
            mv = _alias_version(client, rm.name, alias)
            row[alias] = None if mv is None else str(mv.version)
            row[f"{alias}_distance"] = None if mv is None else mv.tags.get(DISTANCE_TAG)
        out.append(row)
    return out


def show(name: str, client: MlflowClient | None = None) -> list[dict]:
    """All versions of a model: version, aliases, tags."""
    client = client or MlflowClient()
    versions = _versions(client, name)
    if not versions:
        raise ConfigError(f"no registered model {name!r}; `defectgen registry list` shows them")
    return [
        {"version": str(mv.version), "aliases": sorted(mv.aliases or []), "tags": dict(mv.tags)}
        for mv in sorted(versions, key=lambda v: int(v.version))
    ]


def promote(name: str, version: str, client: MlflowClient | None = None) -> None:
    """Make `version` champion by hand (an operator's decision, recorded in the history)."""
    client = client or MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ConfigError(
            f"{name} has no version {version}; see `defectgen registry show`"
        ) from None
    _make_champion(client, name, version)


def rollback(name: str, client: MlflowClient | None = None) -> str:
    """Move `champion` back to the version it replaced; returns that version."""
    client = client or MlflowClient()
    history = _history(client, name)
    if len(history) < 2:
        raise ConfigError(f"{name}: no earlier champion to roll back to (history {history})")
    previous = history[-2]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))
    return previous
