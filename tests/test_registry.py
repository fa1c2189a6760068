"""The MLflow model registry on real backends (sqlite, and a real `mlflow server` on
127.0.0.1): registration from the register stage, the alias rules, idempotence,
rollback, the CLI, and generating with `models:/<name>@champion` on the tiny profile."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from defectgen import cli
from defectgen.core.images import encode_png
from defectgen.runner import execute, get_stage
from tests.conftest import make_params, run_stage, save, texture
from tests.test_tracking import mlflow_server  # noqa: F401  (the real server fixture)

NAME = "defectgen.fixture.crack"


def params_for(root: Path):
    return make_params(
        "folders",
        root,
        preprocess={"image_size": 32, "subset": {"alpha": 0.5}},
        base={"vae_steps": 3, "unet_steps": 3, "batch_size": 8},
        finetune={"ti": {"steps": 2, "lr": 5e-3}, "lora": {"steps": 2, "lr": 1e-3}},
        generate={"steps": 4},
        tracking={"enabled": True},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny base and adapters for two classes, and the sweep's chosen cells."""
    tmp = tmp_path_factory.mktemp("registry")
    for ci, cls in enumerate(("crack", "dent")):
        for i in range(10):
            save(texture(ci * 100 + i, (40, 40)), tmp / "raw" / cls / f"{i}.png")
    params = params_for(tmp / "raw").model_copy(
        update={"tracking": params_for(tmp / "raw").tracking.model_copy(update={"enabled": False})}
    )
    run_stage("ingest", params, out_dir=tmp / "ing")
    run_stage("preprocess", params, ingested=tmp / "ing", out_dir=tmp / "pre")
    run_stage("base", params, preprocessed=tmp / "pre", out_dir=tmp / "base")
    run_stage("finetune", params, preprocessed=tmp / "pre", base=tmp / "base", out_dir=tmp / "ft")
    chosen = {c: {"strength": 0.5, "guidance": 2.0} for c in ("crack", "dent")}
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "chosen.json").write_text(json.dumps({"classes": chosen}))
    return {"tmp": tmp, "root": tmp / "raw"}


def register(trained: dict, out: Path, key: str, verdicts: dict, monkeypatch,
             **gate: dict) -> dict:  # fmt: skip
    """Run the register stage (tracked) as pipeline run `key` with the given verdicts
    ((passed, distance[, compared count]) per class; `gate`: more gate.json keys per class)."""
    gated = out / "gated"
    gated.mkdir(parents=True)
    classes = {
        c: {"passed": v[0], "verdict": "pass" if v[0] else "fail", "fd_effnet_lite0": v[1],
            "reason": "test", "superior": False}
        | ({"n_compared": v[2], "reference_sha256": "ab" * 32} if len(v) > 2 else {})
        | gate.get(c, {})
        for c, v in verdicts.items()
    }  # fmt: skip
    (gated / "gate.json").write_text(
        json.dumps({"extractor": "effnet-lite0", "note": "", "classes": classes})
    )
    monkeypatch.setenv("DEFECTGEN_PIPELINE_KEY", key)
    tmp = trained["tmp"]
    execute(
        get_stage("register"),
        params_for(trained["root"]),
        out_dir=out / "registry",
        inputs={"base": tmp / "base", "adapters": tmp / "ft", "sweep": tmp / "sweep",
                "gated": gated},
    )  # fmt: skip
    return json.loads((out / "registry" / "registry.json").read_text())["classes"]


def generate_with_champion(uri: str) -> list[Image.Image]:
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    inits = [encode_png(np.full((40, 40), v, dtype=np.uint8)) for v in (60, 180)]
    out = model.predict(pd.DataFrame({"image": inits, "seed": [1, 2]}), params={"steps": 3})
    return [Image.open(io.BytesIO(b)) for b in out["image"]]


def test_alias_rules_idempotence_rollback_cli_and_loading(trained, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)

    verdicts = {"crack": (True, 100.0), "dent": (False, 50.0)}
    undecided = {"verdict": "inconclusive", "reason": "no harm? ...", "change": "more val images"}
    first = register(trained, tmp_path / "r1", "run-1", verdicts, monkeypatch, dent=undecided)
    assert first["crack"] == {
        **first["crack"],
        "version": "1",
        "alias": "champion",
        "created": True,
    }
    # a class kept out is never a version: no model's `latest` is one the gate kept out;
    # registry.json says the gate's own verdict, its reason and what would change it
    assert first["dent"]["version"] is None and first["dent"]["verdict"] == "inconclusive"
    assert first["dent"]["why"] == "not registered: the gate kept it out"
    assert (first["dent"]["reason"], first["dent"]["change"]) == ("no harm? ...", "more val images")
    assert not client.search_registered_models("name='defectgen.fixture.dent'")
    model = client.get_registered_model(NAME)
    assert f"models:/{NAME}@champion" in model.description
    version = client.get_model_version(NAME, "1")
    assert version.description.startswith("Gate: pass, fd_effnet_lite0 100.0.")
    assert "Promotion: the first passing version." in version.description
    # logged from code: the stored model is our model file, no pickled python_model
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    flavor = info.flavors["python_function"]
    assert flavor["model_code_path"].endswith("adapter_model.py") and "python_model" not in flavor
    params = {p.name: p.default for p in info.signature.params}
    assert set(params) == {"strength", "guidance", "steps"}
    assert [c.name for c in info.signature.inputs] == ["image", "seed"]
    tags = version.tags
    assert (
        tags["defectgen.verdict"] == "pass" and tags["defectgen.gate_metric"] == "fd_effnet_lite0"
    )
    assert tags["defectgen.distance"] == "100.0" and tags["defectgen.params_hash"]
    assert len(tags["defectgen.data_hash"]) == 16 and tags["defectgen.pipeline_key"] == "run-1"

    again = register(trained, tmp_path / "r1b", "run-1", verdicts, monkeypatch)
    assert again["crack"]["version"] == "1" and not again["crack"]["created"]  # no duplicate
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1

    worse = register(trained, tmp_path / "r2", "run-2", {"crack": (True, 120.0)}, monkeypatch)
    assert (worse["crack"]["version"], worse["crack"]["alias"]) == ("2", "challenger")
    assert client.get_model_version_by_alias(NAME, "champion").version == 1

    better = register(trained, tmp_path / "r3", "run-3", {"crack": (True, 90.0)}, monkeypatch)
    assert (better["crack"]["version"], better["crack"]["alias"]) == ("3", "champion")
    assert client.get_model_version_by_alias(NAME, "challenger").version == 2

    assert cli.main(["registry", "rollback", NAME]) == 0
    assert client.get_model_version_by_alias(NAME, "champion").version == 1
    assert cli.main(["registry", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"{NAME}: champion v1 (100.0), challenger v2 (120.0), latest v3" in listed
    assert "defectgen.fixture.dent" not in listed  # failed every time: never registered
    assert cli.main(["registry", "rollback", NAME]) == 2  # nothing earlier than v1
    assert "no earlier champion" in capsys.readouterr().err

    images = generate_with_champion(uri)
    assert [(im.size, im.mode) for im in images] == [((32, 32), "L")] * 2
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))

    # a lower distance measured on another basis (another count, other reference images)
    # is not compared: challenger, and the stage says why
    other = register(trained, tmp_path / "r4", "run-4", {"crack": (True, 10.0, 50)}, monkeypatch)
    assert other["crack"]["alias"] == "challenger" and "another basis" in other["crack"]["why"]
    assert client.get_model_version_by_alias(NAME, "champion").version == 1
    tags = client.get_model_version(NAME, other["crack"]["version"]).tags
    assert tags["defectgen.distance_basis"] == "fd_effnet_lite0|abababababababab|50"

    # superior on val (its images beat as many classical copies) outranks a champion that
    # was not, whatever the distance; then a lower distance without it cannot displace it
    best = {"crack": {"superior": True}}
    sup = register(trained, tmp_path / "r5", "run-5", {"crack": (True, 200.0)}, monkeypatch, **best)
    assert sup["crack"]["alias"] == "champion" and "superior on val" in sup["crack"]["why"]
    assert (
        client.get_model_version(NAME, sup["crack"]["version"]).tags["defectgen.superior"] == "true"
    )
    low = register(trained, tmp_path / "r6", "run-6", {"crack": (True, 5.0)}, monkeypatch)
    assert low["crack"]["alias"] == "challenger" and "is superior on val" in low["crack"]["why"]
    assert client.get_model_version_by_alias(NAME, "champion").version == int(
        sup["crack"]["version"]
    )


@pytest.mark.slow
def test_registry_through_a_real_mlflow_server(trained, tmp_path, monkeypatch, mlflow_server):  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = register(trained, tmp_path, "server-run", {"crack": (True, 80.0)}, monkeypatch)
    assert out["crack"]["alias"] == "champion"
    assert len(generate_with_champion(mlflow_server)) == 2
    assert list((tmp_path / "artifacts").rglob("pytorch_lora_weights.safetensors"))
