"""The compiled KFP pipeline: up to date, placed as params `cluster` says, its components
thin shells over the stages, and run end to end with kfp.local (no cluster)."""

import inspect
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from kfp import components, local

from components import fanout, status
from defectgen import manifest
from defectgen.runner import STAGES
from pipelines.compile import DEFAULT_OUT, compile_pipeline
from tests.conftest import REPO, save, texture, toy_repo_params
from tests.test_core_report import check_self_contained

pytestmark = pytest.mark.slow

GPU_TASKS = {"masks", "pairs", "pairs-gate", "segment", "base", "finetune", "sweep", "generate",
             "gate", "train", "detect"}  # fmt: skip


def _compiled(path: Path = DEFAULT_OUT) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec per executor)."""
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_up_to_date(tmp_path: Path):
    fresh = compile_pipeline(REPO / "params.yaml", tmp_path / "defectgen.yaml")
    assert DEFAULT_OUT.read_text() == fresh.read_text(), (
        "pipelines/build/defectgen.yaml is stale: run `python -m pipelines.compile`"
    )


def test_every_stage_is_placed_gpu_tasks_on_gpu_nodes_cpu_tasks_off_them(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cluster"] = {
        "gpu_image": "registry.example/defectgen:gpu-1",
        "cpu_image": "registry.example/defectgen:cpu-1",
        "parallelism": 3,
        "accelerator_type": "nvidia.com/gpu",
        "accelerator_limit": 2,
        "gpu_node_selector": {"pool": "h100"},
        "gpu_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}],
        "mlflow_secret": "team-mlflow",
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    spec, k8s = _compiled(compile_pipeline(tmp_path / "params.yaml", tmp_path / "p.yaml"))
    executors = spec["deploymentSpec"]["executors"]
    names = {e.removeprefix("exec-").rstrip("-23").replace("-", "_") for e in executors}
    assert {s.name for s in STAGES} <= names  # every dvc stage has its task
    assert names - {s.name for s in STAGES} == {"classes", "merge_datasets", "status"}
    for name, executor in executors.items():
        task = name.removeprefix("exec-")
        container, placement = executor["container"], k8s[name]
        gpu = task in GPU_TASKS
        assert container["image"] == f"registry.example/defectgen:{'gpu' if gpu else 'cpu'}-1"
        assert placement["secretAsEnv"][0]["secretName"] == "team-mlflow"
        if gpu:
            assert container["resources"]["accelerator"]["resourceCount"] == "2"
            assert placement["nodeSelector"] == {"labels": {"pool": "h100"}}
            assert placement["tolerations"] == [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ]
            assert placement["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        else:
            assert "accelerator" not in container.get("resources", {}), task
            assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(placement), task
    # The per-class fan-out, the verdict's condition around register, the exit handler.
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = next(t for t in body.values() if "parameterIterator" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    loop_tasks = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert {"finetune", "sweep", "generate", "gate"} <= set(loop_tasks)
    cond = next(t for t in loop_tasks.values() if "triggerPolicy" in t)
    assert "gate-Output" in cond["triggerPolicy"]["condition"]
    assert "'pass'" in cond["triggerPolicy"]["condition"]
    cond_tasks = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(cond_tasks) == {"register"}
    retried = {n for n, t in {**body, **loop_tasks}.items() if "retryPolicy" in t}
    assert retried == GPU_TASKS
    assert spec["root"]["dag"]["tasks"]["status"]["triggerPolicy"]["strategy"] == (
        "ALL_UPSTREAM_TASKS_COMPLETED"
    )


def _task_inputs(spec: dict) -> list[tuple[str, dict]]:
    """(task name, its parameter inputs) for every task in every DAG of the spec."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return [
        (name, task.get("inputs", {}).get("parameters", {}))
        for dag in dags
        for name, task in dag["tasks"].items()
    ]


def test_cache_keys_hold_nothing_that_changes_between_runs():
    """KFP's cache key covers a task's inputs: none may be a per-run value (the run id),
    or no stage is ever reused. The MLflow key reaches the pods as an env var from the
    pod's run-id label instead, which is outside the key."""
    spec, k8s = _compiled()
    text = DEFAULT_OUT.read_text()
    assert "pipeline_job_uuid" not in text and "pipeline_job_name" not in text
    for task, inputs in _task_inputs(spec):
        for name, value in inputs.items():  # a constant may not be a run-time placeholder
            constant = value.get("runtimeValue", {}).get("constant")
            assert not (isinstance(constant, str) and "{{$" in constant), (task, name)
    for name, placement in k8s.items():
        assert placement["fieldPathAsEnv"] == [
            {"name": "DEFECTGEN_PIPELINE_KEY", "fieldPath": "metadata.labels['pipeline/runid']"}
        ], name
    # the component specs themselves take no run id either
    for name, component in spec["components"].items():
        params = component.get("inputDefinitions", {}).get("parameters", {})
        assert "pipeline_key" not in params, name


def test_the_raw_data_reaches_the_ingest_pod_on_its_pvc(tmp_path: Path):
    _, k8s = _compiled()
    mounted = {name: p["pvcMount"] for name, p in k8s.items() if "pvcMount" in p}
    assert list(mounted) == ["exec-ingest"]
    (mount,) = mounted["exec-ingest"]
    assert mount["mountPath"] == "/mnt/defectgen-data" and mount["constant"] == "defectgen-data"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cluster"].update({"data_pvc": None})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _, k8s = _compiled(compile_pipeline(tmp_path / "params.yaml", tmp_path / "p.yaml"))
    assert not any("pvcMount" in p for p in k8s.values())


def test_components_are_thin_shells_over_the_stages():
    """Each stage component passes exactly its stage's inputs to stages.<x>.run."""
    for stage in STAGES:
        module = __import__(f"components.{stage.name}", fromlist=[stage.name])
        source = inspect.getsource(module)
        assert f'"{stage.name}",' in source and "run_from_yaml(" in source, stage.name
        code = {"pairs_gate": "gate"}.get(stage.name, stage.name)  # the gate, on the pairs
        run = __import__(f"defectgen.stages.{code}", fromlist=["run"]).run
        run_inputs = set(inspect.signature(run).parameters) - {"params", "out_dir"}
        assert run_inputs == {name for name, _, _ in stage.inputs}, stage.name
        for name in run_inputs:
            assert f'"{name}":' in source or name == "source", (stage.name, name)
        # artifact name = parameter name: the component's inputs are the runner's
        fields = inspect.signature(getattr(module, stage.name).python_func).parameters
        inputs = {n for n, p in fields.items() if "Input" in str(p.annotation) or n == "source"}
        assert inputs == run_inputs, stage.name
    assert "defectgen.fanout" in inspect.getsource(fanout)
    assert "defectgen.status" in inspect.getsource(status)


def _dataset(root: Path) -> Path:
    """crack and dent: random textures; scratch: near-constant grey (its real-vs-real
    distance is ~0, so no synthetic set can come within any ratio of it: it must fail)."""
    for ci, cls in enumerate(["crack", "dent"]):
        for i in range(20):  # val 4 and 8: two halves (sweep, gate) of at least 2 each
            save(texture(ci * 100 + i), root / cls / f"{cls}_{i}.png")
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
    # the verdicts this test needs come from the distance rule: random textures ~12x pass,
    # the grey class ~3e4x fails (the utility rule is tested in test_stage_gate)
    params["gate"].update(decide_by="fidelity", max_ratio=1000.0)
    pipeline(params_yaml=yaml.safe_dump(params), source=str(_dataset(tmp_path / "ds")), track=True)
    run = _one(pipeline_root, "defectgen-*")
    labels = ["crack", "dent", "scratch"]

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
    assert {c: v["passed"] for c, v in verdicts.items()} == {
        "crack": True, "dent": True, "scratch": False
    }  # fmt: skip
    assert {r["label"] for r in manifest.read_rows(gated)} == {"crack", "dent"}

    # dsl.If on the verdict: only the passing classes reached the registry.
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {"defectgen.kfp.crack", "defectgen.kfp.dent"}
    assert len(list(run.glob("for-loop-*-iteration-*/register"))) == 2

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


def test_exit_handler_reports_a_failed_run(tmp_path: Path, monkeypatch):
    """A run that fails part-way (base: a checkpoint that is not there) still ends with
    its status page and a report of what finished, rendered by the exit handler; the
    failing GPU task is retried as params cluster says (kfp.local honours retry policies;
    compiled here with a 1 s backoff instead of the default minute)."""
    params = toy_repo_params("broken", "overridden", images_per_class=2)
    params["cluster"] = {"retries": 1, "backoff": "1s"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    compiled = compile_pipeline(tmp_path / "params.yaml", tmp_path / "retry-fast.yaml")
    params["model"].update({"profile": "sd15", "base": str(tmp_path / "no-checkpoint")})
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    pipeline_root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=False,
    )
    pipeline = components.load_component_from_file(str(compiled))
    pipeline(params_yaml=yaml.safe_dump(params), source=str(_dataset(tmp_path / "ds")), track=True)
    run = _one(pipeline_root, "defectgen-*")
    assert not list(run.glob("report/html"))  # the report task never ran
    summary = _one(run, "status/summary").read_text()
    assert "# defectgen run FAILED: broken" in summary
    assert "| ingest | FINISHED |" in summary
    assert summary.count("| base | FAILED |") == 2  # the first try and one retry
    assert "| finetune |" not in summary
    assert "- report: rendered from the finished stages' MLflow runs (2 of 6" in summary

    html = _one(run, "status/report").read_text(encoding="utf-8")
    check_self_contained(html)
    assert "defectgen report: broken" in html and "Dataset" in html
    assert "No output from: sweep, generate, gate, train." in html
    assert "Quality gate" not in html

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    parent = client.search_runs(
        [client.get_experiment_by_name("defectgen").experiment_id],
        filter_string="tags.`defectgen.run_status` = 'FAILED'",
    )
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
