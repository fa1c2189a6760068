"""The base, finetune, sweep and generate stages on the tiny profile, end to end on a
small PIL-made dataset: outputs, provenance, leakage, determinism, resume, ablations,
sd15, and the sweep's choice reaching generation."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from defectgen import manifest, prior
from defectgen.core.diffusion import adapt, models, sample
from defectgen.errors import ConfigError, DataError
from defectgen.prior import open_base
from defectgen.stages import base, finetune, sweep
from tests.conftest import make_params, run_stage, save, texture

CLASSES = ("crack", "dent")
FAST = {
    "preprocess": {
        "image_size": 32,
        "subset": {"alpha": 0.5},
        "split": {"train": 0.6, "val": 0.3, "test": 0.1},  # val images for the sweep
    },
    "base": {"vae_steps": 3, "unet_steps": 3, "batch_size": 8},
    "finetune": {"ti": {"steps": 2, "lr": 5e-3}, "lora": {"steps": 2, "lr": 1e-3}},
    "generate": {"images_per_class": 5, "batch_size": 3, "steps": 4, "strength": 0.6},
    "sweep": {"strengths": [0.3, 0.8], "guidances": [1.0, 4.0], "probe_images": 4},
    "gate": {"kid_subsets": 5},
}


def params_for(root: Path, **overrides):
    sections = {k: dict(v) for k, v in FAST.items()}
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return make_params("folders", root, **sections)


def _stage(name: str, params, run_dirs: dict, out, **inputs):
    """A stage on the module's run: its preprocessed folder and base unless given."""
    inputs.setdefault("base", run_dirs["base"])
    if inputs["base"] is None:
        del inputs["base"]
    return run_stage(name, params, preprocessed=run_dirs["pre"], out_dir=out, **inputs)


def _generate_from(run_dirs: dict, sweep: Path, out: Path):
    """Generate with the module's adapters at a sweep folder's chosen settings."""
    params = params_for(run_dirs["root"])
    return _stage("generate", params, run_dirs, out, adapters=run_dirs["ft"], sweep=sweep)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    """ingest -> preprocess -> base -> finetune -> generate, once for the module."""
    tmp = tmp_path_factory.mktemp("pipeline")
    root = tmp / "raw"
    for ci, cls in enumerate(CLASSES):
        for i in range(20):  # val about 6 per class: two halves of 3 (sweep, gate)
            save(texture(ci * 100 + i, (48, 48)), root / cls / f"{cls}_{i}.png")
    params = params_for(root)
    dirs = {name: tmp / name for name in ("ingested", "pre", "base", "ft", "gen")}
    run_stage("ingest", params, out_dir=dirs["ingested"])
    run_stage("preprocess", params, ingested=dirs["ingested"], out_dir=dirs["pre"])
    dirs["base_metrics"] = run_stage("base", params, preprocessed=dirs["pre"], out_dir=dirs["base"])
    dirs["base_digest"] = tree_digest(dirs["base"])
    run_stage("finetune", params, preprocessed=dirs["pre"], base=dirs["base"], out_dir=dirs["ft"])
    run_stage(
        "generate",
        params,
        preprocessed=dirs["pre"],
        base=dirs["base"],
        adapters=dirs["ft"],
        out_dir=dirs["gen"],
    )
    dirs["root"] = root
    return dirs


def test_tiny_base_is_pretrained_and_saved_in_sd15_layout(run_dirs):
    out = run_dirs["base"]
    record = json.loads((out / "base.json").read_text())
    assert record["profile"] == "tiny" and record["source"] == "pipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (out / "pipeline" / part).exists()
    pipe = models.load_pipeline(
        out / "pipeline", revision=None, rt=models.runtime(params_for(run_dirs["root"]).model)
    )
    assert models.fingerprint(pipe) == record["fingerprint"]
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the trained latents
    assert {p.name for p in (out / "curves").iterdir()} == {"vae.csv", "unet.csv"}
    assert len((out / "curves" / "vae.csv").read_text().splitlines()) == 1 + 3
    metrics = run_dirs["base_metrics"]
    subset = [r for r in manifest.read_rows(run_dirs["pre"]) if r["in_subset"]]
    assert metrics["n_images"] == len(subset)
    assert np.isfinite(metrics["vae_psnr_val_db"]) and metrics["params/unet"] > 0
    # the VAE's ceiling next to a perfect VAE's, at the same N (all val images here); a
    # 3-step VAE reconstructs far worse than the real images themselves
    n_val = sum(r["split"] == "val" for r in manifest.read_rows(run_dirs["pre"]))
    assert metrics["fd_images"] == min(n_val, metrics["n_images"]) > 0
    assert metrics["fd_effnet_lite0_recon"] > metrics["fd_effnet_lite0_real"] > 0
    assert not (out.parent / ".base.resume").exists()  # cleaned once complete


def test_finetune_writes_diffusers_adapters_and_leaves_the_base_alone(run_dirs):
    ft, pre = run_dirs["ft"], run_dirs["pre"]
    assert tree_digest(run_dirs["base"]) == run_dirs["base_digest"]
    base_fp = json.loads((run_dirs["base"] / "base.json").read_text())["fingerprint"]
    rows = manifest.read_rows(pre)
    for label in CLASSES:
        folder = ft / "adapters" / label
        record = json.loads((folder / "adapter.json").read_text())
        assert record["token"] == f"<{label}>" and record["prompt"] == f"a photo of <{label}>"
        assert record["base"]["fingerprint"] == base_fp
        assert set(record["phases"]) == {"ti", "lora"}
        assert record["phases"]["lora"]["rank"] == 1 and record["phases"]["ti"]["steps"] == 2
        ids = sorted(r["id"] for r in rows if r["label"] == label and r["in_subset"])
        assert record["data"]["n_images"] == len(ids)
        assert record["data"]["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
        assert set(load_file(folder / adapt.EMBEDS_NAME)) == {f"<{label}>"}
        assert (folder / adapt.LORA_NAME).is_file()
        assert (ft / "curves" / f"{label}.ti.csv").is_file()
    # A fresh base copy is bit-identical to the record: finetuning changed no base weight.
    params = params_for(run_dirs["root"])
    assert (
        models.fingerprint(open_base(run_dirs["base"], params, models.runtime(params.model)))
        == base_fp
    )


def test_generate_writes_counted_sized_images_with_provenance(run_dirs):
    gen, pre = run_dirs["gen"], run_dirs["pre"]
    rows = manifest.read_rows(gen)
    assert sorted({r["label"] for r in rows}) == list(CLASSES)
    for label in CLASSES:
        assert len([r for r in rows if r["label"] == label]) == 5
    real = {r["id"]: r for r in manifest.read_rows(pre)}
    for row in rows:
        assert row["origin"] == "synthetic" and row["split"] == "train" and not row["in_subset"]
        image = Image.open(gen / row["path"])
        assert image.size == (32, 32) and image.mode == "L"
        assert row["generator"].startswith("stablesdg-img2img adapter=")
        params = json.loads(row["gen_params"])
        assert params["strength"] == 0.6 and params["steps"] == 4 and params["mode"] == "img2img"
        parent = real[row["parent_id"]]
        assert parent["label"] == row["label"]
        # Leakage: parents are train images the adapter saw, never val or test.
        assert parent["split"] == "train" and parent["in_subset"]
    assert (gen / "samples.png").is_file()
    assert json.loads((gen / "generate.json").read_text())["crack"]["n"] == 5


def test_a_row_regenerates_its_image(run_dirs):
    gen, pre = run_dirs["gen"], run_dirs["pre"]
    row = manifest.read_rows(gen)[3]
    gp = json.loads(row["gen_params"])
    parent = next(r for r in manifest.read_rows(pre) if r["id"] == row["parent_id"])
    params = params_for(run_dirs["root"])
    pipe = open_base(run_dirs["base"], params, models.runtime(params.model))
    adapt.load_adapter(pipe, run_dirs["ft"] / "adapters" / row["label"], f"<{row['label']}>")
    again = sample.generate(
        sample.sampler(pipe, gp["mode"]),
        prompt=gp["prompt"],
        seeds=[gp["seed"]],
        parents=[np.asarray(Image.open(pre / parent["path"]))],
        strength=gp["strength"],
        guidance=gp["guidance"],
        steps=gp["steps"],
        size=gp["size"],
        channels=1,
    )[0]
    assert np.array_equal(again, np.asarray(Image.open(gen / row["path"])))


def test_generate_is_deterministic(run_dirs, tmp_path):
    params = params_for(run_dirs["root"])
    _stage("generate", params, run_dirs, tmp_path / "again", adapters=run_dirs["ft"])
    assert [r["id"] for r in manifest.read_rows(tmp_path / "again")] == [
        r["id"] for r in manifest.read_rows(run_dirs["gen"])
    ]


def test_txt2img_mode_has_no_parent(run_dirs, tmp_path):
    params = params_for(run_dirs["root"], generate={"mode": "txt2img", "images_per_class": 2})
    _stage("generate", params, run_dirs, tmp_path / "txt", adapters=run_dirs["ft"])
    rows = manifest.read_rows(tmp_path / "txt")
    assert len(rows) == 4 and all(r["parent_id"] is None for r in rows)
    assert all(json.loads(r["gen_params"])["strength"] is None for r in rows)
    assert all(r["generator"].startswith("stablesdg-txt2img") for r in rows)


DREAMBOOTH = {"steps": 2, "lr": 1e-3, "n_prior": 3, "prior_steps": 2, "class_noun": "defect"}


@pytest.mark.parametrize(
    ("train", "files"),
    [
        ("lora", {adapt.EMBEDS_NAME, adapt.LORA_NAME}),
        ("unet", {adapt.EMBEDS_NAME, adapt.UNET_NAME}),
    ],
)
def test_dreambooth_mode_keeps_the_identifier_and_learns_with_a_prior(
    run_dirs, tmp_path, train, files
):
    params = params_for(
        run_dirs["root"],
        finetune={"mode": "dreambooth", "dreambooth": {**DREAMBOOTH, "train": train}},
    )
    out = tmp_path / "ft"
    run_stage("finetune", params, preprocessed=run_dirs["pre"], base=run_dirs["base"], out_dir=out)
    prior = json.loads((out / "prior" / "prior.json").read_text())
    assert prior["prompt"] == "a photo of defect" and prior["sampler"] == "ddpm"
    assert len(list((out / "prior").glob("*.png"))) == prior["n_images"] == 3
    rt = models.runtime(params.model)
    base_pipe = open_base(run_dirs["base"], params, rt)
    mean_embedding = base_pipe.text_encoder.get_input_embeddings().weight.mean(0)
    for label in CLASSES:
        folder = out / "adapters" / label
        assert {p.name for p in folder.glob("*.safetensors")} == files
        record = json.loads((folder / "adapter.json").read_text())
        assert record["prompt"] == f"a photo of <{label}> defect" and record["mode"] == "dreambooth"
        phase = record["phases"]["dreambooth"]
        assert set(record["phases"]) == {"dreambooth"}
        assert phase["n_prior"] == 3 and phase["prior_prompt"] == "a photo of defect"
        assert phase["train"] == train and phase["steps"] == 2
        # DreamBooth trains the model, not the identifier: it keeps its initial embedding
        embeds = load_file(folder / adapt.EMBEDS_NAME)[f"<{label}>"]
        assert torch.allclose(embeds, mean_embedding, atol=1e-6)
    # a fresh pipeline with the adapter loaded differs from the base where it was trained
    pipe = open_base(run_dirs["base"], params, rt)
    adapt.load_adapter(pipe, out / "adapters" / "dent", "<dent>")
    if train == "unet":
        trained = load_file(out / "adapters" / "dent" / adapt.UNET_NAME)
        loaded = pipe.unet.state_dict()
        assert all(torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in trained.items())
        base_state = base_pipe.unet.state_dict()
        assert any(not torch.equal(base_state[k], loaded[k]) for k in base_state)
    _stage("generate", params, run_dirs, tmp_path / "gen", adapters=out)
    rows = manifest.read_rows(tmp_path / "gen")
    assert len(rows) == 10
    assert {json.loads(r["gen_params"])["prompt"] for r in rows} == {
        f"a photo of <{c}> defect" for c in CLASSES
    }


@pytest.mark.parametrize(
    ("mode", "files"),
    [
        ("ti", {adapt.EMBEDS_NAME}),
        ("lora", {adapt.EMBEDS_NAME, adapt.LORA_NAME}),
        ("full_attn", {adapt.EMBEDS_NAME, adapt.ATTENTION_NAME}),
    ],
)
def test_ablation_modes(run_dirs, tmp_path, mode, files):
    params = params_for(
        run_dirs["root"],
        finetune={"mode": mode, "classes": ["dent"], "full_attn": {"steps": 2, "lr": 1e-3}},
    )
    _stage("finetune", params, run_dirs, tmp_path / "ft")
    folder = tmp_path / "ft" / "adapters" / "dent"
    assert {p.name for p in folder.glob("*.safetensors")} == files
    assert not (tmp_path / "ft" / "adapters" / "crack").exists()
    record = json.loads((folder / "adapter.json").read_text())
    assert set(record["phases"]) == {mode}
    if mode in ("lora", "full_attn"):  # the token keeps its initial embedding
        pipe = open_base(run_dirs["base"], params, models.runtime(params.model))
        emb = pipe.text_encoder.get_input_embeddings().weight
        assert torch.allclose(
            load_file(folder / adapt.EMBEDS_NAME)["<dent>"], emb.mean(0), atol=1e-6
        )
    _stage("generate", params, run_dirs, tmp_path / "gen", adapters=tmp_path / "ft")
    assert len(manifest.read_rows(tmp_path / "gen")) == 5


def test_finetune_resumes_after_a_kill(run_dirs, tmp_path, monkeypatch):
    params = params_for(run_dirs["root"])
    out = tmp_path / "ft"
    trained: list[str] = []
    real = finetune._adapt_class

    def dies_on_second(unit, params, base_dir, label, *args):
        if trained:
            raise KeyboardInterrupt("killed")
        trained.append(label)
        return real(unit, params, base_dir, label, *args)

    monkeypatch.setattr(finetune, "_adapt_class", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_stage(
            "finetune", params, preprocessed=run_dirs["pre"], base=run_dirs["base"], out_dir=out
        )
    assert not out.exists() and trained == ["crack"]

    def counting(unit, params, base_dir, label, *args):
        trained.append(label)
        return real(unit, params, base_dir, label, *args)

    monkeypatch.setattr(finetune, "_adapt_class", counting)
    run_stage("finetune", params, preprocessed=run_dirs["pre"], base=run_dirs["base"], out_dir=out)
    assert trained == ["crack", "dent"]  # crack was not trained again
    assert sorted(p.name for p in (out / "adapters").iterdir()) == list(CLASSES)
    # The resumed adapter is the one the uninterrupted run made (same seed, same data).
    assert (out / "adapters" / "crack" / adapt.LORA_NAME).read_bytes() == (
        run_dirs["ft"] / "adapters" / "crack" / adapt.LORA_NAME
    ).read_bytes()
    assert not (tmp_path / ".ft.resume").exists()


def test_base_resumes_after_a_kill_without_training_the_vae_again(run_dirs, tmp_path, monkeypatch):
    params = params_for(run_dirs["root"])
    out = tmp_path / "base"
    vae_runs: list[int] = []
    real_vae = base.loops.train_vae

    def counting_vae(*args, **kwargs):
        vae_runs.append(1)
        return real_vae(*args, **kwargs)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(base.loops, "train_vae", counting_vae)
    monkeypatch.setattr(base, "train_prior_unet", killed)
    with pytest.raises(KeyboardInterrupt):
        run_stage("base", params, preprocessed=run_dirs["pre"], out_dir=out)
    assert not out.exists() and vae_runs == [1]

    monkeypatch.undo()
    monkeypatch.setattr(base.loops, "train_vae", counting_vae)
    metrics = run_stage("base", params, preprocessed=run_dirs["pre"], out_dir=out)
    assert vae_runs == [1]  # the finished VAE came from the resume folder
    assert "time/vae_s" not in metrics and metrics["time/unet_s"] > 0
    # the resumed prior is the one the uninterrupted run made, curves included
    assert tree_digest(out) == run_dirs["base_digest"]
    assert not (tmp_path / ".base.resume").exists()


def test_sd15_profile_loads_a_local_checkpoint_folder(run_dirs, tmp_path):
    folder = run_dirs["base"] / "pipeline"  # a tiny checkpoint in SD1.5's on-disk layout
    params = params_for(
        run_dirs["root"],
        model={"profile": "sd15", "base": str(folder)},
        finetune={"classes": ["crack"]},
    )
    run_stage("base", params, preprocessed=run_dirs["pre"], out_dir=tmp_path / "base")
    record = json.loads((tmp_path / "base" / "base.json").read_text())
    assert record["profile"] == "sd15" and record["source"] == str(folder.resolve())
    assert (
        record["fingerprint"]
        == json.loads((run_dirs["base"] / "base.json").read_text())["fingerprint"]
    )
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["base.json"]  # no copy
    _stage("finetune", params, run_dirs, tmp_path / "ft", base=tmp_path / "base")
    _stage(
        "generate",
        params,
        run_dirs,
        tmp_path / "gen",
        base=tmp_path / "base",
        adapters=tmp_path / "ft",
    )
    rows = manifest.read_rows(tmp_path / "gen")
    assert len(rows) == 5 and "base=sd15:" in rows[0]["generator"]


def test_profile_mismatch_and_unknown_classes_are_clear_errors(run_dirs, tmp_path):
    params = params_for(run_dirs["root"], model={"profile": "sd15", "base": "/nonexistent"})
    with pytest.raises(DataError, match="built for profile 'tiny'.*re-run the base stage"):
        _stage("finetune", params, run_dirs, tmp_path / "x")
    params = params_for(run_dirs["root"], finetune={"classes": ["crack", "bubble"]})
    with pytest.raises(DataError, match=r"\['bubble'\].*not in the dataset"):
        _stage("finetune", params, run_dirs, tmp_path / "x")
    with pytest.raises(ConfigError, match="must contain \\{token\\}"):
        params_for(run_dirs["root"], finetune={"prompt_template": "a photo"})


def _sweep(run_dirs, out: Path, **overrides) -> dict:
    params = params_for(run_dirs["root"], **overrides)
    return _stage("sweep", params, run_dirs, out, adapters=run_dirs["ft"])


def test_sweep_chooses_a_cell_per_class_and_generate_uses_it(run_dirs, tmp_path):
    metrics = _sweep(run_dirs, tmp_path / "sweep")
    out = tmp_path / "sweep"
    chosen = json.loads((out / "chosen.json").read_text())
    assert chosen["source"] == "sweep" and chosen["extractor"] == "effnet-lite0"
    table = pd.read_parquet(out / "sweep.parquet")
    assert len(table) == len(CLASSES) * 4 and metrics["n_cells"] == len(table)
    for label in CLASSES:
        cells = table[table["label"] == label]
        assert set(zip(cells["strength"], cells["guidance"], strict=True)) == {
            (0.3, 1.0), (0.3, 4.0), (0.8, 1.0), (0.8, 4.0)
        }  # fmt: skip
        assert (cells["n_probe"] == 4).all() and cells["chosen"].sum() == 1
        best = cells[cells["chosen"]].iloc[0]
        eligible = cells[cells["eligible"]]
        pool = eligible if len(eligible) else cells
        # the lowest strength among the cells within noise of the lowest distance
        lowest = pool.loc[pool["fd_effnet_lite0"].idxmin()]
        band = 1.96 * lowest["fd_effnet_lite0_spread"]
        tied = pool[pool["fd_effnet_lite0"] <= lowest["fd_effnet_lite0"] + band]
        assert best["strength"] == tied["strength"].min()
        assert best["fd_effnet_lite0"] <= lowest["fd_effnet_lite0"] + band
        entry = chosen["classes"][label]
        assert (entry["strength"], entry["guidance"]) == (best["strength"], best["guidance"])
        assert metrics[f"{label}/strength"] == best["strength"]
        assert entry["fd_effnet_lite0_real"] > 0 and entry["reason"]
        heat = Image.open(out / "heatmaps" / f"{label}.png")
        assert heat.format == "PNG" and heat.size[0] > 100
        assert len((out / "heatmaps" / f"{label}.csv").read_text().splitlines()) == 1 + 4
        probes = Image.open(out / "probes" / f"{label}.png")  # 2 x 2 labelled 32 px panels
        assert probes.format == "PNG" and min(probes.size) > 2 * 32
    assert not (tmp_path / ".sweep.resume").exists()

    _generate_from(run_dirs, out, tmp_path / "gen")
    report = json.loads((tmp_path / "gen" / "generate.json").read_text())
    for row in manifest.read_rows(tmp_path / "gen"):
        gp = json.loads(row["gen_params"])
        entry = chosen["classes"][row["label"]]
        assert (gp["strength"], gp["guidance"]) == (entry["strength"], entry["guidance"])
        assert report[row["label"]]["settings_from"] == "sweep"


def test_sweep_disabled_records_the_params_settings(run_dirs, tmp_path):
    metrics = _sweep(
        run_dirs,
        tmp_path / "sweep",
        sweep={"enabled": False},
        generate={"per_class": {"dent": {"strength": 0.9, "guidance": 6.0}}},
    )
    assert metrics == {"n_cells": 0.0}
    chosen = json.loads((tmp_path / "sweep" / "chosen.json").read_text())
    assert chosen["source"] == "params"
    assert (chosen["classes"]["dent"]["strength"], chosen["classes"]["dent"]["guidance"]) == (
        0.9,
        6.0,
    )
    assert chosen["classes"]["crack"]["strength"] == 0.6  # the global generate.strength
    # A chosen.json without a class the adapters have is a clear error in generate.
    del chosen["classes"]["crack"]
    (tmp_path / "sweep" / "chosen.json").write_text(json.dumps(chosen))
    with pytest.raises(DataError, match=r"no chosen settings for classes \['crack'\]"):
        _generate_from(run_dirs, tmp_path / "sweep", tmp_path / "gen")


def test_sweep_resumes_after_a_kill(run_dirs, tmp_path, monkeypatch):
    probed: list[str] = []
    real = sweep._probe_class

    def dies_on_second(unit, params, ref, base_dir, adapter_dir, *args):
        if probed:
            raise KeyboardInterrupt("killed")
        probed.append(adapter_dir.name)
        return real(unit, params, ref, base_dir, adapter_dir, *args)

    monkeypatch.setattr(sweep, "_probe_class", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        _sweep(run_dirs, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists() and probed == ["crack"]

    def counting(unit, params, ref, base_dir, adapter_dir, *args):
        probed.append(adapter_dir.name)
        return real(unit, params, ref, base_dir, adapter_dir, *args)

    monkeypatch.setattr(sweep, "_probe_class", counting)
    _sweep(run_dirs, tmp_path / "sweep")
    assert probed == ["crack", "dent"]  # crack was not probed again
    first = pd.read_parquet(tmp_path / "sweep" / "sweep.parquet")
    _sweep(run_dirs, tmp_path / "again")  # uninterrupted: the same numbers
    pd.testing.assert_frame_equal(first, pd.read_parquet(tmp_path / "again" / "sweep.parquet"))


def test_a_checkpoint_changed_after_the_base_stage_is_refused(run_dirs, tmp_path):
    """sd15 weights that moved under the same name (an edited folder, a hub revision that
    moved) no longer match base.json's fingerprint: every stage refuses them."""
    folder = tmp_path / "sd15"
    shutil.copytree(run_dirs["base"] / "pipeline", folder)
    params = params_for(run_dirs["root"], model={"profile": "sd15", "base": str(folder)})
    run_stage("base", params, preprocessed=run_dirs["pre"], out_dir=tmp_path / "base")
    rt = models.runtime(params.model)
    open_base(tmp_path / "base", params, rt)  # unchanged: loads
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, weights)
    prior._VERIFIED.clear()  # as in the next stage's process: checked once each
    with pytest.raises(DataError, match="fingerprint .* Pin model.revision"):
        open_base(tmp_path / "base", params, rt)


def test_a_cluster_run_refuses_an_unpinned_hub_id(run_dirs, tmp_path, monkeypatch):
    params = params_for(run_dirs["root"], model={"profile": "sd15", "base": "org/some-model"})
    monkeypatch.setenv("DEFECTGEN_CLUSTER", "1")
    with pytest.raises(ConfigError, match="model.revision is not set"):
        run_stage("base", params, preprocessed=run_dirs["pre"], out_dir=tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_finetune_modes_table_compares_modes_on_one_base(run_dirs, tmp_path):
    from experiments import finetune_modes

    params = params_for(run_dirs["root"], finetune={"dreambooth": DREAMBOOTH})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    args = ["--preprocessed", str(run_dirs["pre"]), "--base", str(run_dirs["base"]),
            "--modes", "ti,dreambooth", "--params", str(tmp_path / "params.yaml"),
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert finetune_modes.main(args) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(result["modes"]) == {"ti", "dreambooth"}
    for mode, phase in (("ti", "ti"), ("dreambooth", "dreambooth")):
        classes = result["modes"][mode]["classes"]
        assert set(classes) == set(CLASSES)
        assert all(c["phases"] == {phase: 2} and c["fd"] > 0 for c in classes.values())
    # DreamBooth's identifier starts from the rare token, the ablation's from the mean
    assert result["modes"]["dreambooth"]["finetune"]["initializer"] == "sks"
    assert result["modes"]["ti"]["finetune"]["initializer"] is None
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("| dreambooth |") == table.count("| ti |") == len(CLASSES)
    # a rerun keeps every finished stage
    stamp = (tmp_path / "work" / "ti" / "gate" / "gate.json").stat().st_mtime_ns
    assert finetune_modes.main(args) == 0
    assert (tmp_path / "work" / "ti" / "gate" / "gate.json").stat().st_mtime_ns == stamp
