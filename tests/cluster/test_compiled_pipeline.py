"""The compiled KFP pipeline: up to date, placed as params `cluster` says, its components
thin shells over the stages (tests/e2e/test_kfp_local.py runs it with kfp.local)."""

import dataclasses
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from defectgen.config import ALL, load_params
from defectgen.declarations import FANOUT_READS, get_stage
from defectgen.runner import STAGES
from defectgen.scoped import RUNNER_READS
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


def _cache_inputs(params: dict, folder: Path, name: str) -> dict[str, str]:
    """Every task of the pipeline compiled from `params`: its inputs (parameters, constants
    included, and artifacts: what KFP's cache key covers), as JSON."""
    (folder / f"{name}.params.yaml").write_text(yaml.safe_dump(params))
    spec, _ = _compiled(compile_pipeline(folder / f"{name}.params.yaml", folder / f"{name}.yaml"))
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {
        name: json.dumps(task.get("inputs", {}), sort_keys=True)
        for dag in dags
        for name, task in dag["tasks"].items()
    }


@pytest.fixture(scope="module")
def repo_cache_inputs(tmp_path_factory) -> dict[str, str]:
    """_cache_inputs of the repo's params.yaml (compiled once for the edits below)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return _cache_inputs(params, tmp_path_factory.mktemp("repo"), "repo")


@pytest.mark.parametrize(
    ("key", "value", "rerun"),
    [
        # a rule of the gate alone: gate and pairs_gate (the gate on the pairs' images)
        ("gate.decide_by", "fidelity", {"gate", "pairs-gate"}),
        # a key each of base, finetune and sweep reads, and no other stage
        ("base.unet_steps", 301, {"base"}),
        ("finetune.batch_size", 2, {"finetune"}),
        ("sweep.probe_images", 10, {"sweep"}),
        # read by the real-image reference of masks, sweep and both gates
        ("gate.max_images", 150, {"masks", "sweep", "gate", "pairs-gate"}),
    ],
)
def test_a_task_s_cache_key_changes_only_with_a_key_its_stage_reads(
    key, value, rerun, repo_cache_inputs, tmp_path: Path
):
    """Recompiled after one edit, only the tasks whose stage reads the key get other
    inputs (and register, report and the exit handler, which read every parameter):
    every other task is served from KFP's cache on the next run."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    before = repo_cache_inputs
    section, field = key.split(".")
    assert params[section][field] != value
    params[section][field] = value
    after = _cache_inputs(params, tmp_path, "after")
    assert set(after) == set(before)
    changed = {task for task in before if before[task] != after[task]}
    assert changed == rerun | {"register", "report", "status"}


def test_each_task_is_handed_the_keys_its_stage_reads():
    """A stage task's params input holds the keys its stage declares (tests/
    test_declarations.py: exactly what its code reads), with the runner's own (the MLflow
    experiment, the dataset's name); values as params.yaml has them."""
    spec, _ = _compiled()
    handed = {
        task: json.loads(inputs["params"]["runtimeValue"]["constant"])
        for task, inputs in _task_inputs(spec)
        if "params" in inputs
    }
    params = load_params(REPO / "params.yaml")
    every = {k for k in params.model_fields if k != "cluster"}
    for stage in STAGES:
        keys = handed.pop(stage.name.replace("_", "-"))
        if ALL in stage.reads:
            assert set(keys) == every, stage.name
        else:
            runner = {k for k in RUNNER_READS if k.split(".")[0] not in stage.reads}
            assert set(keys) == set(stage.reads) | runner, stage.name
        assert keys == params.keyed(*keys), stage.name
    assert set(handed["classes"]) == set(FANOUT_READS) | set(RUNNER_READS)
    assert set(handed["status"]) == every


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


def _call_component(component, stage, tmp: Path, monkeypatch) -> dict:
    """Call a component's function as KFP would (artifacts as objects with a path under
    `tmp`), with the runner's entry point recording what it was handed and writing the
    stage's declared report files instead of running the stage."""
    from defectgen import runner

    # report and status key their MLflow parent by their run folder: restored afterwards
    monkeypatch.setenv(runner.PIPELINE_KEY_ENV, "a-run")
    calls = []

    def run_task(name, params, *, out_dir, inputs, **kw):
        calls.append({"stage": name, "out_dir": out_dir, "inputs": inputs})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for report in stage.reports:
            (Path(out_dir) / report).write_text(report)
        return {}

    monkeypatch.setattr(runner, "run_task", run_task)
    monkeypatch.setattr("defectgen.cluster.fanin.verdict", lambda folder, label: "pass")
    kwargs = {}
    for name, param in inspect.signature(component.python_func).parameters.items():
        kind = str(param.annotation)
        if "Input" in kind or "Output" in kind:
            kwargs[name] = SimpleNamespace(path=str(tmp / name), log_metric=lambda k, v: None)
        else:
            kwargs[name] = False if "bool" in kind else "x"
    component.python_func(**kwargs)
    (call,) = calls
    return {**call, "fields": kwargs}


def test_components_hand_the_runner_exactly_their_stage_and_its_declared_artifacts(
    tmp_path, monkeypatch
):
    """Each stage component calls the runner with its own stage, every declared input
    artifact from the task input of the same name and its output artifact as out_dir."""
    for stage in STAGES:
        module = __import__(f"components.{stage.name}", fromlist=[stage.name])
        tmp = tmp_path / stage.name
        tmp.mkdir()
        call = _call_component(getattr(module, stage.name), stage, tmp, monkeypatch)
        assert call["stage"] == stage.name
        # every declared input from the task input of its name (ingest's raw `source`, a
        # folder under the mounted PVC, is a string parameter; the rest are artifacts)
        given = {n: getattr(v, "path", v) for n, v in call["fields"].items()}
        assert call["inputs"] == {n: given[n] for n, _, _ in stage.inputs}, stage.name
        if stage.name == "report":  # KFP's HTML and Markdown artifacts get the pages
            assert (tmp / "html").read_text() == "report.html"
            assert (tmp / "markdown").read_text() == "report.md"
        else:
            assert call["out_dir"] == str(tmp / stage.output), stage.name


def test_each_component_is_its_stage_s_declaration_rendered():
    """components/<stage>.py is generated (pipelines.kfp_components): an input added to
    a declaration reaches the component's signature and its call of the runner."""
    from pipelines import kfp_components

    for stage in STAGES:
        committed = (REPO / "components" / f"{stage.name}.py").read_text(encoding="utf-8")
        assert committed == kfp_components.render(stage), (
            f"components/{stage.name}.py is stale: python -m pipelines.kfp_components --write"
        )
    train = get_stage("train")
    grown = dataclasses.replace(train, inputs=(*train.inputs, ("masks", True, "masks")))
    text = kfp_components.render(grown)
    assert "    masks: Input[Dataset],\n" in text and '"masks": masks.path,' in text
    assert "masks" not in kfp_components.render(train)


def test_the_stages_take_what_they_declare():
    """stages.<module>.run's inputs are the declared artifacts (through Stage.arguments),
    plus the resume key the runner hands the resuming stages."""
    for stage in STAGES:
        run = __import__(stage.module_name, fromlist=["run"]).run
        module_of = {arg: artifact for artifact, arg in stage.arguments}
        taken = {module_of.get(n, n) for n in inspect.signature(run).parameters}
        assert ("params_key" in taken) == stage.resumes, stage.name
        assert taken - {"params", "out_dir", "params_key"} == {n for n, _, _ in stage.inputs}


def test_the_compiled_dag_wires_each_stage_from_its_declared_producers():
    """Every stage task in the compiled spec (the loop body and the condition included)
    takes exactly its declared input artifacts, each from the task of the stage that
    declares it as output: directly, through the fan-in merge of the per-class loop, or
    as a loop input from outside the loop."""
    from defectgen.declarations import producer

    spec, _ = _compiled()
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {name: task for dag in dags for name, task in dag["tasks"].items()}
    stage_of = {s.name.replace("_", "-"): s for s in STAGES}

    def source(artifact: str, ref: dict) -> str:
        """The task that made an input artifact, through merges and loop channels."""
        if "componentInputArtifact" in ref:  # a loop input: pipelinechannel--<task>-<key>
            return ref["componentInputArtifact"].removeprefix("pipelinechannel--")[
                : -len(artifact) - 1
            ]
        made_by = ref["taskOutputArtifact"]["producerTask"]
        if made_by.startswith("merge-datasets"):  # the fan-in of the loop's per-class outputs
            (parts,) = tasks[made_by]["inputs"]["artifacts"].values()
            channel = parts["taskOutputArtifact"]["outputArtifactKey"]
            return channel.removeprefix("pipelinechannel--")[: -len(artifact) - 1]
        assert ref["taskOutputArtifact"]["outputArtifactKey"] == artifact
        return made_by

    seen = set()
    for name, task in tasks.items():
        stage = stage_of.get(name)
        if stage is None:
            continue
        seen.add(stage.name)
        given = task.get("inputs", {}).get("artifacts", {})
        assert set(given) == {a for a, _, _ in stage.inputs} - {"source"}, stage.name
        for artifact, ref in given.items():
            assert source(artifact, ref) == producer(artifact).name.replace("_", "-"), (
                stage.name, artifact)  # fmt: skip
    assert seen == {s.name for s in STAGES}
