"""The compiled KFP pipeline: up to date, placed as params `cluster` says, its components
thin shells over the stages (tests/test_kfp_local.py runs it with kfp.local)."""

import inspect
from pathlib import Path

import yaml

from components import fanout, status
from defectgen.runner import STAGES
from pipelines.compile import DEFAULT_OUT, compile_pipeline
from tests.conftest import REPO

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
    # the loop body is the stages themselves, plain tasks: no pipeline nested anywhere
    # (one inside a ParallelFor does not run on every backend: kubeflow/pipelines#10039)
    loop_tasks = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(loop_tasks) == {"finetune", "sweep", "generate", "gate", "condition-3"}
    graphs = {n for n, c in spec["components"].items() if "dag" in c}
    assert graphs == {"comp-exit-handler-1", "comp-for-loop-2", "comp-condition-3"}
    # the fan-in collects the loop's own tasks' outputs
    collected = {
        a["taskOutputArtifact"]["outputArtifactKey"]
        for t in body.values() if t["taskInfo"]["name"].startswith("merge")
        for a in t["inputs"]["artifacts"].values()
    }  # fmt: skip
    assert collected == {f"pipelinechannel--{k}" for k in
                         ("sweep-sweep", "generate-generated", "gate-gated")}  # fmt: skip
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
        run = __import__(stage.module_name, fromlist=["run"]).run
        module_of = {arg: artifact for artifact, arg in stage.arguments}
        run_inputs = {module_of.get(n, n) for n in inspect.signature(run).parameters} - {
            "params", "out_dir"}  # fmt: skip
        assert run_inputs == {name for name, _, _ in stage.inputs}, stage.name
        for name in run_inputs:
            assert f'"{name}":' in source or name == "source", (stage.name, name)
        # artifact name = parameter name: the component's inputs are the runner's
        fields = inspect.signature(getattr(module, stage.name).python_func).parameters
        inputs = {n for n, p in fields.items() if "Input" in str(p.annotation) or n == "source"}
        assert inputs == run_inputs, stage.name
        # and its output the declared artifact (the report's: KFP's HTML and Markdown)
        outputs = {n for n, p in fields.items() if "Output" in str(p.annotation)} - {"metrics"}
        assert outputs == ({"html", "markdown"} if stage.name == "report" else {stage.output})
    assert "defectgen.fanout" in inspect.getsource(fanout)
    assert "defectgen.status" in inspect.getsource(status)
