"""The gate on real NEU-DET steel images: a faithful class passes, a pure-noise class
fails and contributes nothing, copies of anything the generator learned from are
dropped as near-duplicates before the verdict, the val halves are disjoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectgen import manifest
from defectgen.core import neighbours
from defectgen.core.images import encode_png, pixel_id
from defectgen.real_images import load_images
from defectgen.reference import Reference
from tests.conftest import make_params, run_stage, shared_data

SPLIT = {"train": 0.6, "val": 0.3, "test": 0.1}
# inclusion vs pitted surface: similar enough that more real inclusion images help a
# classifier measurably (scratches vs patches separate perfectly with a few images)
FAITHFUL, NOISE = "inclusion", "pitted_surface"


@pytest.fixture(scope="module")
def steel(tmp_path_factory) -> tuple[Path, Path, object]:
    """NEU-DET inclusion and pitted_surface (150 each) -> ingest -> preprocess at 64 px: about
    45 train images per class in the few-shot subset, as many outside it, and 22 or 23
    val images per class in the gate's half, where the no-harm check is scored."""
    tmp = tmp_path_factory.mktemp("gate")
    images = shared_data("neu-det") / "images"
    for cls in (FAITHFUL, NOISE):
        for path in sorted(images.glob(f"{cls}_*.jpg"))[:150]:
            (tmp / "raw" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp / "raw" / cls / path.name)
    params = make_params(
        "folders",
        tmp / "raw",
        preprocess={"image_size": 64, "split": SPLIT, "subset": {"alpha": 0.5}},
        gate={"max_ratio": 2.0, "kid_subsets": 10},
    )
    run_stage("ingest", params, out_dir=tmp / "ingested")
    run_stage("preprocess", params, ingested=tmp / "ingested", out_dir=tmp / "pre")
    return tmp, tmp / "pre", params


def _synthetic_row(folder: Path, label: str, pixels: np.ndarray, parent: str | None) -> dict:
    oid = pixel_id(pixels)
    rel = f"images/{label}/{oid[:16]}.png"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(encode_png(pixels))
    return manifest.make_row(
        id=oid, path=rel, label=label, split="train", width=64, height=64, channels=1,
        origin="synthetic", parent_id=parent, generator="test", gen_params="{}", source="test",
    )  # fmt: skip


def test_noise_fails_faithful_passes_copies_are_dropped(steel):
    tmp, pre, params = steel
    rows = manifest.read_rows(pre)
    train = [r for r in rows if r["label"] == FAITHFUL and r["split"] == "train"]
    learned = [r for r in train if r["in_subset"]]  # what the generator learned from
    held_out = [r for r in train if not r["in_subset"]]
    rng = np.random.default_rng(0)
    gen = tmp / "generated"
    synthetic = []
    for r in held_out:  # faithful: real images the generator never saw, no parent
        px = np.asarray(Image.open(pre / r["path"]))
        synthetic.append(_synthetic_row(gen, FAITHFUL, px, None))
    # img2img that returned its parent, and memorised images with no parent recorded
    copies = [(r, r["id"]) for r in learned[:4]] + [(r, None) for r in learned[4:7]]
    for r, parent in copies:
        px = np.asarray(Image.open(pre / r["path"]))
        synthetic.append(_synthetic_row(gen, FAITHFUL, px, parent))
    for _ in range(20):  # a generator that learned nothing
        noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        synthetic.append(_synthetic_row(gen, NOISE, noise, None))
    manifest.write_manifest(synthetic, gen / manifest.MANIFEST_NAME)

    # the user accepts an undecided class (gate.inconclusive): this pair of classes is
    # told apart perfectly on val, so no val image can show the faithful images' effect
    accept = params.model_copy(
        update={"gate": params.gate.model_copy(update={"inconclusive": "accept"})}
    )
    metrics = run_stage("gate", accept, preprocessed=pre, generated=gen, out_dir=tmp / "gate")
    report = json.loads((tmp / "gate" / "gate.json").read_text())
    assert report["extractor"] == "effnet-lite0" and "offline" in report["note"]
    sc, pa = report["classes"][FAITHFUL], report["classes"][NOISE]
    # the faithful images pass the floors; the no-harm check saw the two arms predict
    # every val image alike, which bounds the loss only by the rule of three (3 / n per
    # class, wider than the margin): inconclusive, accepted, and the reason says why
    assert sc["passed"] and (sc["verdict"], sc["rule"]) == ("inconclusive", "class")
    assert sc["no_harm"]["interval"] == "rule of three" and sc["fidelity_passed"]
    assert "rule of three" in sc["reason"] and "accepted by gate.inconclusive" in sc["reason"]
    assert "not resolvable at this dataset size" in sc["change"]
    # noise is further from val than the real-vs-real limit allows: a floor fails it
    assert (pa["passed"], pa["verdict"], pa["rule"]) == (False, "fail", "floor")
    assert "fidelity floor" in pa["reason"] and pa["fidelity_passed"] is False
    assert pa["no_harm"] is None and "better images" in pa["change"]
    ref = Reference(params, pre, tmp / ".features")
    # scored on the gate's half of val, never on test; pooled over the classes past the
    # floors (the faithful one alone here), with as many images per arm
    n_val = sum(len(ref.val(c, "gate")) for c in (FAITHFUL, NOISE))
    assert sc["no_harm"]["n_images"] == n_val == report["pooled"]["n_images"]
    assert sc["no_harm"]["n_added"] == len(held_out) == report["pooled"]["n_added"]
    assert sc["no_harm"]["n_seeds"] == params.gate.seeds
    assert f"{sc['no_harm']['n_images']} val images" in sc["reason"]
    assert report["tags"] == {f"defectgen.verdict.{FAITHFUL}": "inconclusive",
                              f"defectgen.verdict.{NOISE}": "fail",
                              f"defectgen.rule.{FAITHFUL}": "class",
                              f"defectgen.rule.{NOISE}": "floor"}  # fmt: skip
    assert metrics[f"{FAITHFUL}/no_harm_lower"] == sc["no_harm"]["ci"][0] < -params.gate.margin
    # the baselines order as they should: real < blurred/noised, and noise-only is worst
    assert sc["fd_effnet_lite0_real"] < sc["fd_effnet_lite0_blur"]
    assert sc["fd_effnet_lite0_real"] < sc["fd_effnet_lite0_noise"]
    assert pa["fd_effnet_lite0"] > pa["fd_effnet_lite0_noise"]
    # every copy is caught, with or without a recorded parent, and none of the faithful
    assert sc["near_duplicates"] == len(copies) and sc["n_candidates"] == len(held_out)
    # the verdict was taken on what passes: the faithful images alone
    assert sc["n_compared"] == min(len(held_out), len(learned))
    # realism per image: real images sit inside the real manifold, noise does not
    assert sc["knn_precision"] > 0.5 and pa["knn_precision"] == 0.0
    assert pa["outside_manifold"] == 20
    kept = manifest.read_rows(tmp / "gate")
    assert {r["label"] for r in kept} == {FAITHFUL}  # the failed class contributes nothing
    assert {r["id"] for r in kept} == {r["id"] for r in synthetic[: len(held_out)]}
    assert sc["fraction_kept"] == len(held_out) / (len(held_out) + len(copies))
    assert metrics[f"{NOISE}/passed"] == 0.0 and metrics["n_passed_classes"] == 1
    table = (tmp / "gate" / "gate.csv").read_text().splitlines()
    assert table[0].startswith("label,verdict,rule,reason") and len(table) == 3
    assert any((tmp / ".features").iterdir())  # real features cached for the next run


def test_manifold_filter_keeps_only_images_inside_the_real_manifold(steel):
    tmp, pre, params = steel
    rows = manifest.read_rows(pre)
    held_out = [r for r in rows if r["label"] == FAITHFUL and r["split"] == "train"
                and not r["in_subset"]]  # fmt: skip
    gen = tmp / "generated-mixed"
    rng = np.random.default_rng(1)
    synthetic = [
        _synthetic_row(gen, FAITHFUL, np.asarray(Image.open(pre / r["path"])), None)
        for r in held_out
    ]
    synthetic += [
        _synthetic_row(gen, FAITHFUL, rng.integers(0, 256, (64, 64), dtype=np.uint8), None)
        for _ in range(3)
    ]
    manifest.write_manifest(synthetic, gen / manifest.MANIFEST_NAME)
    on = params.model_copy(
        update={
            "gate": params.gate.model_copy(
                update={"manifold_filter": True, "knn_k": 1, "decide_by": "fidelity"}
            )
        }
    )
    run_stage("gate", on, preprocessed=pre, generated=gen, out_dir=tmp / "gate-filtered")
    sc = json.loads((tmp / "gate-filtered" / "gate.json").read_text())["classes"][FAITHFUL]
    assert sc["n_candidates"] == len(synthetic) - sc["outside_manifold"]
    # the filter keeps exactly the images inside the real (train) manifold, measured here
    # independently with the same extractor
    ref = Reference(on, pre, tmp / ".features")
    f_syn = ref.features(load_images(gen, synthetic, 64))
    f_real = ref.real_features(ref.train(FAITHFUL), 64)
    inside = neighbours.inside_manifold(f_syn, f_real, k=1).tolist()
    kept = {r["id"] for r in manifest.read_rows(tmp / "gate-filtered")}
    assert sc["passed"]  # by the distance rule here: real images against real images
    assert kept == {r["id"] for r, i in zip(synthetic, inside, strict=True) if i}
    assert not any(inside[len(held_out) :])  # noise is outside a k = 1 manifold


def test_val_halves_are_disjoint_seeded_and_cover_val(steel):
    tmp, pre, params = steel
    ref = Reference(params, pre, tmp / ".features-halves")
    for label in (FAITHFUL, NOISE):
        whole = {r["id"] for r in ref.val(label)}
        sweep = {r["id"] for r in ref.val(label, "sweep")}
        gate_half = {r["id"] for r in ref.val(label, "gate")}
        assert sweep and gate_half and not sweep & gate_half and sweep | gate_half == whole
        assert len(sweep) - len(gate_half) in (0, 1)
        assert sweep == {r["id"] for r in ref.val(label, "sweep")}  # stable
