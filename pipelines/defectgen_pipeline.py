"""The KFP v2 pipeline: the same stages as dvc.yaml, in the same order.

Stages join here the day they join dvc.yaml. Compile with
`python -m pipelines.compile` (writes pipelines/build/defectgen.yaml).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset

from components.base import base
from components.finetune import finetune
from components.gate import gate
from components.generate import generate
from components.ingest import ingest
from components.preprocess import preprocess
from components.register import register
from components.report import report
from components.sweep import sweep
from components.train import train

# CPU stages request no accelerator; GPU node pools are normally tainted, so these
# pods (which carry no GPU toleration) are not scheduled there.
# The model stages (base, finetune, sweep, generate, gate, train) run on CPU here too until the
# GPU node-pool
# placement lands (issue: run at scale); they get more memory for the models.
CPU_REQUEST, CPU_LIMIT = "1", "2"
MEMORY_REQUEST, MEMORY_LIMIT = "2G", "8G"
MODEL_MEMORY_REQUEST, MODEL_MEMORY_LIMIT = "4G", "16G"


# The pipeline's outputs: every synthetic image, those the gate let through, the
# classifiers' evaluation per condition, and the HTML report.
class Outputs(NamedTuple):
    generated: Dataset
    gated: Dataset
    evaluation: Dataset
    report: HTML


def _cpu_task(task: dsl.PipelineTask, name: str, *, model: bool = False) -> dsl.PipelineTask:
    task.set_display_name(name)
    task.set_cpu_request(CPU_REQUEST).set_cpu_limit(CPU_LIMIT)
    if model:
        task.set_memory_request(MODEL_MEMORY_REQUEST).set_memory_limit(MODEL_MEMORY_LIMIT)
    else:
        task.set_memory_request(MEMORY_REQUEST).set_memory_limit(MEMORY_LIMIT)
    task.set_caching_options(True)  # force a rerun with `enable_caching=False` on submit
    return task


@dsl.pipeline(
    name="defectgen",
    description="Expand a small defect-image dataset: ingest -> preprocess -> base -> "
    "finetune -> sweep -> generate -> gate -> train, register -> report.",
)
def defectgen_pipeline(params_yaml: str, source_path: str = "", track: bool = False) -> Outputs:
    """Args:
    params_yaml: the whole params.yaml as text (the compiled default is the repo's).
    source_path: the raw dataset folder as seen from inside the pods (a mounted
        volume or bucket); empty: params data.root (or the ELPV package).
    track: log to MLflow ($MLFLOW_TRACKING_URI must reach a server from the pods).
    """
    # Every task gets the params, the MLflow pipeline key (the KFP run id) and `track`.
    common = {
        "params_yaml": params_yaml,
        "pipeline_key": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "track": track,
    }
    ing = ingest(
        **common,
        source_path=source_path,
    )
    _cpu_task(ing, "ingest")
    pre = preprocess(
        **common,
        ingested=ing.outputs["ingested"],
    )
    _cpu_task(pre, "preprocess")
    prior = base(
        **common,
        preprocessed=pre.outputs["preprocessed"],
    )
    _cpu_task(prior, "base", model=True)
    adapted = finetune(
        **common,
        preprocessed=pre.outputs["preprocessed"],
        base_model=prior.outputs["base_model"],
    )
    _cpu_task(adapted, "finetune", model=True)
    swept = sweep(
        **common,
        preprocessed=pre.outputs["preprocessed"],
        base_model=prior.outputs["base_model"],
        adapters=adapted.outputs["adapters"],
    )
    _cpu_task(swept, "sweep", model=True)
    gen = generate(
        **common,
        preprocessed=pre.outputs["preprocessed"],
        base_model=prior.outputs["base_model"],
        adapters=adapted.outputs["adapters"],
        chosen=swept.outputs["chosen"],
    )
    _cpu_task(gen, "generate", model=True)
    judged = gate(
        **common,
        preprocessed=pre.outputs["preprocessed"],
        generated=gen.outputs["generated"],
    )
    _cpu_task(judged, "gate", model=True)
    trained = train(
        **common,
        preprocessed=pre.outputs["preprocessed"],
        generated=gen.outputs["generated"],
        gated=judged.outputs["gated"],
    )
    _cpu_task(trained, "train", model=True)
    registered = register(
        **common,
        base_model=prior.outputs["base_model"],
        adapters=adapted.outputs["adapters"],
        chosen=swept.outputs["chosen"],
        gated=judged.outputs["gated"],
    )
    _cpu_task(registered, "register")
    rendered = report(
        **common,
        ingested=ing.outputs["ingested"],
        preprocessed=pre.outputs["preprocessed"],
        chosen=swept.outputs["chosen"],
        generated=gen.outputs["generated"],
        gated=judged.outputs["gated"],
        evaluation=trained.outputs["evaluation"],
    )
    rendered.after(registered)  # the report lists the versions just registered
    _cpu_task(rendered, "report")
    return Outputs(
        generated=gen.outputs["generated"],
        gated=judged.outputs["gated"],
        evaluation=trained.outputs["evaluation"],
        report=rendered.outputs["html"],
    )
