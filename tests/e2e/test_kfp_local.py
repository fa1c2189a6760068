"""The compiled KFP pipeline run end to end with kfp.local (no cluster): the fan-out,
the fan-in, the verdict's condition, the exit handler on success (on failure:
test_kfp_exit_handler.py)."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from kfp import components, local

from defectgen import manifest
from pipelines.compile import DEFAULT_OUT
from tests.conftest import save, texture, toy_repo_params
from tests.core.test_page import check_self_contained

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


def test_compiled_pipeline_runs_locally(tmp_path: Path, monkeypatch):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # the task processes inherit it
    pipeline_root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    pipeline = components.load_component_from_file(str(DEFAULT_OUT))
    # data.root is required by the folders layout; the pipeline's source overrides it.
    params = toy_repo_params("kfp", "overridden", images_per_class=2)
    # the verdicts this test needs come from the distance-ratio floor alone: random
    # textures ~12x pass, the grey class ~3e4x fails (a 2-step tiny prior's textures are
    # worse than noised real ones, and the no-harm check needs val images: both are
    # tested in tests/core/test_gate.py, test_no_harm.py and tests/stages/test_gate.py)
    params["gate"].update(decide_by="fidelity", max_ratio=1000.0, floors=["ratio"])
    params["train"]["workers"] = 1  # the dvc run tests the worker pool; here it costs ~30 s
    pipeline(params_yaml=yaml.safe_dump(params), source=str(_dataset(tmp_path / "ds")), track=True)
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
    parent = client.search_runs(
        [client.get_experiment_by_name("defectgen").experiment_id],
        filter_string="tags.`defectgen.run_status` = 'SUCCEEDED'",
    )
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
