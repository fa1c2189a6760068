"""Each stage is declared once (defectgen.declarations.STAGES) and everything else agrees:
dvc.yaml's source deps are the stage module's computed import closure and its params are
the declared keys; the declared keys are what the code reads; stages import no other
stage; the classifier stages start without the diffusion stack; resume keys and MLflow
params follow the declaration."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from defectgen import declarations
from defectgen.declarations import STAGES, get_stage, graph, upstream
from pipelines import dvc_stages
from tests.conftest import make_params

REPO = Path(__file__).resolve().parent.parent
STAGES_DIR = REPO / "src" / "defectgen" / "stages"


def _options(cmd: str) -> dict[str, str]:
    """`--name value` pairs of a dvc.yaml cmd."""
    words = cmd.split()
    return {w[2:]: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


def test_dvc_yaml_wires_the_declared_graph():
    """Each stage's cmd passes every input artifact as --<artifact>, from the folder its
    producer writes (--out), listed in deps; one producer per artifact; every stage
    after its inputs' producers."""
    dvc = yaml.safe_load(dvc_stages.DVC_YAML.read_text(encoding="utf-8"))["stages"]
    assert len({s.output for s in STAGES}) == len(STAGES)  # one name, one writer
    folder = {s.output: _options(dvc[s.name]["cmd"])["out"] for s in STAGES}
    done: set[str] = set()
    for name, inputs in graph():
        options = _options(dvc[name]["cmd"])
        given = set(options) - {"params", "out", "metrics", "source"}
        assert given == set(inputs), name  # every input named as its artifact, no other
        for artifact, producer in inputs.items():
            assert options[artifact] == folder[artifact], (name, artifact)
            assert folder[artifact] in dvc[name]["deps"], (name, artifact)
            assert producer in done, f"{name} is declared before {producer}"
        assert dvc[name].get("outs", [options["out"]]) == [options["out"]], name
        done.add(name)
    assert upstream(get_stage("segment"))["pairs_gated"] == "pairs_gate"
    assert upstream(get_stage("pairs_gate")) == {"preprocessed": "preprocess", "pairs": "pairs"}


def test_the_closure_follows_lazy_imports_and_packages():
    closure = {str(p) for p in dvc_stages.closure("defectgen.stages.segment")}
    # segment -> core.segment (a function-level import counts as much as a top-level one)
    assert "src/defectgen/core/segment.py" in closure
    assert "src/defectgen/config.py" in closure  # defaults shape every output
    assert "src/defectgen/stages/segment.py" in closure
    assert not any(p.startswith("src/defectgen/stages/") and p != "src/defectgen/stages/segment.py"
                   and not p.endswith("__init__.py") for p in closure)  # fmt: skip


def test_dvc_yaml_is_the_render_of_the_declarations():
    assert dvc_stages.DVC_YAML.read_text(encoding="utf-8") == dvc_stages.render(), (
        "dvc.yaml differs from the declarations: python -m pipelines.dvc_stages --write"
    )


def test_the_docs_draw_the_declared_dag():
    for doc in dvc_stages.DAG_DOCS:
        assert dvc_stages.dag_block() in doc.read_text(encoding="utf-8"), (
            f"{doc.name}'s DAG differs from the declarations: python -m pipelines.dvc_stages "
            "--write"
        )


def test_the_drawing_is_paths_that_hold_every_stage_once():
    """Each drawn line follows edges of the declared graph, and every stage is on one
    line as its own (a line's first and last stage may lead in from, or out to, one drawn
    above)."""
    producers = {name: set(inputs.values()) for name, inputs in graph()}
    own = []
    for i, chain in enumerate(dvc_stages.chains()):
        assert all(a in producers[b] for a, b in zip(chain, chain[1:], strict=False)), chain
        own += chain if i == 0 else [s for s in chain[1:] if s not in own]
    assert sorted(own) == sorted(producers)
    assert dvc_stages.chains()[0][0] == "ingest" and dvc_stages.chains()[0][-1] == "report"


def test_a_declaration_change_reaches_dvc_yaml(monkeypatch):
    """Outputs, metrics, plots and side-effect stages follow the declaration alone."""
    stages = list(declarations.STAGES)
    i = next(k for k, s in enumerate(stages) if s.name == "gate")
    stages[i] = dataclasses.replace(
        stages[i], plots=(("gate.csv", "", "class", "ratio"),), always_runs=True
    )
    monkeypatch.setattr(declarations, "STAGES", tuple(stages))
    dvc = yaml.safe_load(dvc_stages.render())
    gate = dvc["stages"]["gate"]
    assert "--out data/gated" in gate["cmd"] and "--metrics" not in gate["cmd"]
    assert gate["always_changed"] is True and "outs" not in gate and "metrics" not in gate
    assert {"data/gated/gate.csv": {"x": "class", "y": "ratio"}} in dvc["plots"]
    train = dvc["stages"]["train"]
    assert train["outs"] == ["data/train"] and train["metrics"] == [
        {"metrics/train.json": {"cache": False}}
    ]
    assert {"data/train/curves": {"x": "step", "y": "loss"}} in dvc["plots"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_declared_params_are_exactly_the_keys_the_code_reads(stage):
    """Key by key: a section is declared only where the code reads it whole (or every key
    of it), so a key the stage never reads cannot rerun it."""
    read = dvc_stages.params_read(stage.module_name)
    declared = set(stage.reads)
    assert len(declared) == len(stage.reads), f"{stage.name} declares a key twice"
    assert not read - declared, f"{stage.name} reads {sorted(read - declared)} undeclared"
    assert not declared - read, f"{stage.name} declares {sorted(declared - read)} unread"


def test_the_pipeline_s_other_tasks_declare_what_their_code_reads():
    """The KFP tasks that run no stage: the fan-out's class list reads two keys (one of
    them through Params.synthesised), the exit handler every key (it renders the report)."""
    assert dvc_stages.params_read("defectgen.cluster.fanin") == set(declarations.FANOUT_READS)
    assert dvc_stages.params_read("defectgen.reports.status") == set(declarations.STATUS_READS)


def test_no_stage_imports_another_stage():
    for path in sorted(STAGES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            stages = [n for n in names if n.startswith("defectgen.stages")]
            assert not stages, f"{path.name} imports {stages}"


def test_classifier_stages_load_no_diffusion_stack():
    code = (
        "import sys\n"
        "import defectgen.stages.train, defectgen.stages.gate, defectgen.stages.detect\n"
        "import defectgen.stages.segment\n"
        "print(sorted(m for m in ('diffusers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


SKIP_WITHOUT_MASKS = """
import json, sys
from pathlib import Path
from defectgen.config import load_params
from defectgen.declarations import get_stage
params, t = load_params(sys.argv[1]), Path(sys.argv[2])
def run_stage(name, params, **inputs):
    return get_stage(name).runner(params, **inputs)
run_stage("ingest", params, out_dir=t / "ingested")
run_stage("preprocess", params, ingested=t / "ingested", out_dir=t / "pre")
done = [run_stage("masks", params, preprocessed=t / "pre", out_dir=t / "masks"),
        run_stage("pairs", params, preprocessed=t / "pre", base=t / "none", masks=t / "masks",
                  out_dir=t / "pairs"),
        run_stage("segment", params, preprocessed=t / "pre", pairs=t / "pairs",
                  pairs_gated=t / "none", out_dir=t / "segment"),
        run_stage("detect", params, preprocessed=t / "pre", generated=t / "none", gated=t / "none",
                   pairs=t / "pairs", pairs_gated=t / "none", out_dir=t / "detect")]
print(json.dumps({"skipped": [m["skipped"] for m in done],
                  "loaded": sorted(m for m in ("torch", "torchvision", "diffusers")
                                   if m in sys.modules)}))
"""


def test_the_mask_branch_skips_a_dataset_without_masks_without_loading_torch(
    tmp_path, folders_dataset
):
    """On a dataset without masks or boxes (the demo's ELPV) the four mask-branch stages
    only write their `skipped` records: a process each in dvc repro and KFP, which must not
    spend seconds importing torch, torchvision and diffusers to say so."""
    params = make_params("folders", folders_dataset, tracking={"enabled": False})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-c", SKIP_WITHOUT_MASKS, str(path), str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"skipped": [1.0] * 4, "loaded": []}
    for stage, record in (("masks", "masks.json"), ("pairs", "pairs.json"),
                          ("segment", "segment.json"), ("detect", "detect.json")):  # fmt: skip
        assert "skipped" in json.loads((tmp_path / stage / record).read_text())


def test_resume_keys_follow_the_declaration(tmp_path):
    base = make_params("folders", tmp_path)
    changed = make_params("folders", tmp_path, finetune={"data": "train"})
    gate = get_stage("gate")
    # the gate compares against finetune.data's images: a change there is a new gate run
    assert gate.params_hash(changed) != gate.params_hash(base)
    # train does not read finetune.data: its resume key stays
    train = get_stage("train")
    assert train.params_hash(changed) == train.params_hash(base)


def test_mlflow_logs_the_declared_keys(tmp_path, monkeypatch):
    import mlflow

    from defectgen import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = make_params("folders", tmp_path, tracking={"enabled": True})
    with tracking.stage_run("gate", params, get_stage("gate").reads) as run:
        pass
    logged = mlflow.get_run(run.run_id).data.params
    assert logged["finetune.data"] == params.finetune.data
    assert logged["gate.max_ratio"] == str(params.gate.max_ratio)
    # of train, only the primary metric the no-harm check scores; nothing of base
    assert {k for k in logged if k.startswith("train.")} == {"train.primary"}
    assert not any(k.startswith("base.") for k in logged)


def test_the_report_reports_missing_exactly_its_required_inputs(tmp_path):
    """The report (its own list of the inputs it cannot do without) and its declaration
    (what the CLI requires, and what the run status counts) agree."""
    report = get_stage("report")
    required = [artifact for artifact, needed, _ in report.inputs if needed]
    metrics = report.runner(make_params("folders", tmp_path), out_dir=tmp_path / "r")
    assert metrics["n_missing_inputs"] == len(required)
    page = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    stages = ", ".join(upstream(report)[a] for a in required)
    assert f"No output from: {stages}." in page


def test_a_path_through_the_dag_is_what_lies_between_two_stages():
    assert declarations.path("masks", "segment") == ["masks", "pairs", "pairs_gate", "segment"]
    classification = declarations.path("ingest", "train")
    assert classification[0] == "ingest" and classification[-1] == "train"
    assert "masks" not in classification and "pairs" not in classification  # not train's inputs
    assert "generate" in classification and "base" in classification
