"""The compiled KFP pipeline run end to end with kfp.local (no cluster): the fan-out,
the fan-in, the verdict's condition, the exit handler on success (on failure:
test_kfp_exit_handler.py), and KFP's cache across a recompile that changes a gate key."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from kfp import components, local

from defectgen import manifest
from pipelines.compile import compile_pipeline
from tests.conftest import save, texture, toy_repo_params
from tests.reports.test_page import check_self_contained

pytestmark = pytest.mark.slow


def _dataset(root: Path) -> Path:
    """crack: random textures; scratch: near-constant grey (its real-vs-real distance is
    ~0, so no synthetic set can come within any ratio of it: it must fail)."""
    for i in range(20):  # val 4 and 8: two halves (sweep, gate) of at least 2 each
        save(texture(i), root / "crack" / f"crack_{i}.png")
    for i in range(12):
        grey = np.full((40, 40), 128, np.uint8)
        grey[0, i] = 129  # distinct images (ingest drops exact duplicates)
        save(grey, root / "scratch" / f"scratch_{i}.png")
    return root


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def compiled(params: dict, folder: Path, name: str):
    """The pipeline compiled from `params` (written to folder/<name>.params.yaml)."""
    (folder / f"{name}.params.yaml").write_text(yaml.safe_dump(params))
    spec = compile_pipeline(folder / f"{name}.params.yaml", folder / f"{name}.yaml")
    return components.load_component_from_file(str(spec))


def _tasks_run(run: Path) -> set[str]:
    """The tasks that executed in a kfp.local run (a task served from the cache leaves
    no folder), loop iterations' included."""
    loops = [p for p in run.iterdir() if p.name.startswith("for-loop-")]
    return {p.name for p in [*run.iterdir(), *(q for lp in loops for q in lp.iterdir())]
            if p.is_dir() and not p.name.startswith("for-loop-")}  # fmt: skip


def test_compiled_pipeline_runs_locally(tmp_path: Path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # the task processes inherit it
    pipeline_root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=True,
    )
    # data.root is required by the folders layout; the pipeline's source overrides it.
    params = toy_repo_params("kfp", "overridden", images_per_class=2)
    # the verdicts this test needs come from the distance-ratio floor alone: random
    # textures ~12x pass, the grey class ~3e4x fails (a 2-step tiny prior's textures are
    # worse than noised real ones, and the no-harm check needs val images: both are
    # tested in tests/core/test_gate.py, test_no_harm.py and tests/stages/test_gate.py)
    params["gate"].update(decide_by="fidelity", max_ratio=1000.0, floors=["ratio"])
    params["train"]["workers"] = 1  # the dvc run tests the worker pool; here it costs ~30 s
    source = str(_dataset(tmp_path / "ds"))
    compiled(params, tmp_path, "first")(source=source, track=True)
    run = _one(pipeline_root, "defectgen-*")
    labels = ["crack", "scratch"]

    # The fan-out: one finetune task per class, each adapting only its class.
    adapted = sorted(run.glob("for-loop-*-iteration-*/finetune/adapters/finetune.json"))
    assert sorted(k for p in adapted for k in json.loads(p.read_text())) == labels
    assert all(len(json.loads(p.read_text())) == 1 for p in adapted)

    # The fan-in: merged folders as one run over every class would write them.
    generated = gated = None
    for folder in {p.parent for p in run.glob("merge-datasets*/merged/*.json")}:
        if (folder / "generate.json").is_file():
            generated = folder
        if (folder / "gate.json").is_file():
            gated = folder
    rows = manifest.read_rows(generated)
    assert sorted(r["label"] for r in rows) == sorted(labels * 2)
    assert {(r["origin"], r["split"]) for r in rows} == {("synthetic", "train")}
    assert all(r["parent_id"] and r["generator"] for r in rows)
    verdicts = json.loads((gated / "gate.json").read_text())["classes"]
    assert {c: v["passed"] for c, v in verdicts.items()} == {"crack": True, "scratch": False}
    assert {r["label"] for r in manifest.read_rows(gated)} == {"crack"}

    # dsl.If on the verdict: only the passing classes reached the registry.
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {"defectgen.kfp.crack"}
    assert len(list(run.glob("for-loop-*-iteration-*/register"))) == 1

    evaluation = json.loads((_one(run, "train/train") / "eval.json").read_text())
    assert evaluation["labels"] == labels and "real" in evaluation["models"]["resnet18"]
    html = _one(run, "report/html").read_text(encoding="utf-8")
    assert "defectgen report: kfp" in html and "Quality gate" in html
    assert "The mask branch was skipped: no masks" in html  # the masks task ran, said so
    assert "registered defectgen.kfp.crack" in html and "defectgen.kfp.scratch" not in html
    check_self_contained(html)

    # The exit handler's status page, and the MLflow parent run tagged with the state.
    summary = _one(run, "status/summary").read_text()
    assert "# defectgen run SUCCEEDED: kfp" in summary
    assert "the report task has it" in _one(run, "status/report").read_text()
    for stage in ("ingest", "finetune", "gate", "train", "report"):
        assert f"| {stage} | FINISHED |" in summary
    assert "No run in this pipeline run" not in summary
    parent = client.search_runs(
        [client.get_experiment_by_name("defectgen").experiment_id],
        filter_string="tags.`defectgen.run_status` = 'SUCCEEDED'",
    )
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    # each task logged its own keys; the exit handler gave the parent every one and the hash
    assert parent[0].data.params["gate.margin"] == "0.02"
    assert parent[0].data.params["train.primary"] == params["train"]["primary"]
    assert len(parent[0].data.tags["defectgen.params_hash"]) == 12

    # A gate rule changed and recompiled: only the tasks that read the gate's keys, and
    # those after them, run again; the rest are served from KFP's cache.
    params["gate"]["margin"] = 0.05
    compiled(params, tmp_path, "second")(source=source, track=True)
    (again,) = set(pipeline_root.glob("defectgen-*")) - {run}
    ran = _tasks_run(again)
    assert not ran & {"ingest", "preprocess", "masks", "base", "pairs", "classes", "finetune",
                      "sweep", "generate"}, ran  # fmt: skip
    assert {"gate", "pairs-gate", "segment", "train", "detect", "report", "status"} <= ran
    summary = _one(again, "status/summary").read_text()
    assert (
        "No run in this pipeline run: ingest, preprocess, masks, base, finetune, sweep, "
        "generate, pairs (served from KFP's cache" in summary
    )
