"""The KFP v2 pipeline: the stages of dvc.yaml, with the per-class work fanned out.

Wired from the declarations (defectgen.declarations.STAGES, in their order): each stage's
task takes its declared input artifacts from the tasks that declare them as outputs;
its component is generated from the same declaration (pipelines.kfp_components).

    the stages before the fan-out (ingest, preprocess, masks, base)
    classes -> ParallelFor class (at most cluster.parallelism at once), plain tasks:
      finetune -> sweep -> generate -> gate -> If verdict == "pass": register
    merge (dsl.Collected) each per-class output after finetune: the chosen cells, the
      generated and the gated images
    the stages after it (pairs, pairs_gate, segment, train, detect, report)
    exit handler: status (always: the final state and every stage run; for a run that
      did not succeed, also the report, from what the finished stages logged to MLflow)

Params are fixed at compile time (`build(params)`): each task gets as its `params` input
only the keys its stage reads (declarations: Stage.reads; scoped.task_params renders
them), so KFP's cache key, which covers a task's inputs, changes only when one of those
keys does: a gate rule edited and recompiled reruns gate and what follows it, while base,
finetune, sweep and generate are served from the cache. Placement comes from params
`cluster` (`Placement`): GPU tasks request accelerators and carry the GPU node selector,
tolerations, /dev/shm, retries with backoff and a timeout; CPU tasks (CPU_STAGES, the
fan-out's helpers, the exit handler) carry none of them, so a tainted GPU pool never
runs them. MLflow credentials come from the Kubernetes secret
`cluster.mlflow_secret` (optional: a run with track=False needs none). The raw data
reaches the ingest pod on the PVC `cluster.data_pvc`, mounted at `cluster.data_mount`.
Every task can be served from KFP's cache: no input changes from run to run (the
MLflow key comes from the pod's run-id label, not an input). A retried task restarts its
stage from the beginning: resume state lives in the pod's own filesystem.

Differences from `dvc repro`, on purpose: a failed run's report comes from the exit
handler and needs tracking (an exit task cannot take the stages' artifacts). A class
the gate fails gets no register task here; under dvc, register lists it unregistered.
Compile with `python -m pipelines.compile` (writes pipelines/build/defectgen.yaml).
"""

import importlib

from kfp import dsl, kubernetes
from kfp.dsl import graph_component

from components.fanin import classes, merge_datasets
from components.status import status
from defectgen.cluster import CLUSTER_ENV
from defectgen.config import ClusterConfig, Params
from defectgen.declarations import FANOUT_READS, RAW, STAGES, STATUS_READS, Stage, get_stage
from defectgen.runner import PIPELINE_KEY_ENV, PIPELINE_NAME
from defectgen.scoped import task_params
from pipelines.kfp_components import LABELLED

# the stages run once per class, in order (their outputs are merged after the fan-out)
PER_CLASS = ("finetune", "sweep", "generate", "gate")
CPU_STAGES = {"ingest", "preprocess", "register", "report"}  # no model on a GPU

RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # KFP's run id label on every task pod


class Placement:
    """Applies params `cluster` to tasks: `.cpu(task, name)` or `.gpu(task, name)`."""

    def __init__(self, cluster: ClusterConfig):
        self.cluster = cluster

    def _common(self, task: dsl.PipelineTask, name: str, image: str, res) -> dsl.PipelineTask:
        task.set_display_name(name)
        task.set_container_image(image)
        task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
        task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
        task.set_caching_options(True)  # rerun everything: submit with enable_caching=False
        # The MLflow pipeline key is the KFP run id, read from the pod's label at run time
        # rather than passed as an input: an input that changes every run would change
        # every task's cache key, and no unchanged stage would ever be reused.
        kubernetes.use_field_path_as_env(task, PIPELINE_KEY_ENV, RUN_ID_FIELD)
        task.set_env_variable(CLUSTER_ENV, "1")
        c = self.cluster
        if c.mlflow_secret:
            kubernetes.use_secret_as_env(
                task, c.mlflow_secret, secret_key_to_env=dict(c.mlflow_secret_keys), optional=True
            )
        return task

    def data(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The raw dataset's volume (params cluster.data_pvc) at cluster.data_mount."""
        c = self.cluster
        if c.data_pvc:
            kubernetes.mount_pvc(task, pvc_name=c.data_pvc, mount_path=c.data_mount)
        return task

    def cpu(self, task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        c = self.cluster
        self._common(task, name, c.cpu_image, c.cpu)
        for key, value in c.cpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        if c.cpu_timeout_s:
            kubernetes.set_timeout(task, c.cpu_timeout_s)
        return task

    def gpu(self, task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        c = self.cluster
        self._common(task, name, c.gpu_image, c.gpu)
        task.set_accelerator_type(c.accelerator_type).set_accelerator_limit(c.accelerator_limit)
        for key, value in c.gpu_node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in c.gpu_tolerations:
            kubernetes.add_toleration(
                task, key=t.key, operator=t.operator, value=t.value, effect=t.effect
            )
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=c.shm_size
        )
        task.set_retry(
            num_retries=c.retries,
            backoff_duration=c.backoff,
            backoff_factor=c.backoff_factor,
            backoff_max_duration=c.backoff_max,
        )
        if c.gpu_timeout_s:
            kubernetes.set_timeout(task, c.gpu_timeout_s)
        return task


def build(params: Params) -> graph_component.GraphComponent:
    """The pipeline for `params`, placed on the cluster that params `cluster` describes.

    Wired from the declarations: each stage's task takes its declared input artifacts
    from the tasks that declare them as outputs, in declaration order (which is the
    DAG's). The per-class stages run inside the fan-out; after it, their outputs are the
    merged folders. Adding an input to a stage is its declaration plus
    `python -m pipelines.kfp_components --write`."""
    cluster = params.cluster
    place = Placement(cluster)

    def step(stage: Stage, made: dict, track, **extra) -> dsl.PipelineTask:
        """`stage`'s task: its params input (the keys it reads), `track`, each declared
        input artifact from `made`; its output joins `made`."""
        component = getattr(importlib.import_module(f"components.{stage.name}"), stage.name)
        artifacts = {a: made[a] for a, _, _ in stage.inputs if a != RAW}
        task = component(params=task_params(params, stage.reads), track=track, **artifacts, **extra)
        placed = (place.cpu if stage.name in CPU_STAGES else place.gpu)(task, stage.name)
        if stage.name != "report":  # the report's outputs are its page and summary
            made[stage.output] = task.outputs[stage.output]
        return placed

    def fan_out(made: dict, track) -> None:
        """The per-class stages, once per class (at most cluster.parallelism at once),
        register where the gate passed the class; then their outputs merged into `made`.
        Plain tasks, not a nested pipeline: a pipeline inside a ParallelFor does not run
        on every backend (kubeflow/pipelines#10039)."""
        labels = place.cpu(
            classes(params=task_params(params, FANOUT_READS), preprocessed=made["preprocessed"]),
            "classes",
        )
        loop = dict(made)
        with dsl.ParallelFor(labels.output, parallelism=cluster.parallelism) as label:
            for name in PER_CLASS:
                stage = get_stage(name)
                judged = step(stage, loop, track, **({"label": label} if name in LABELLED else {}))
            with dsl.If(judged.outputs["Output"] == "pass", name="passed-gate"):
                step(get_stage("register"), loop, track)
        for name in PER_CLASS[1:]:  # the adapters stay per class: nothing after reads them
            output = get_stage(name).output
            merged = merge_datasets(parts=dsl.Collected(loop[output]))
            made[output] = place.cpu(merged, f"merge {output}").outputs["merged"]

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Expand a small defect-image dataset: ingest -> preprocess -> base -> "
        "per class (finetune -> sweep -> generate -> gate -> register if passed) -> train, "
        "detect -> report; the exit handler records the run's status.",
    )
    def defectgen_pipeline(source: str = "", track: bool = False):
        """Args:
        source: the raw dataset folder as seen from inside the ingest pod: a path
            under cluster.data_mount, where the PVC cluster.data_pvc is mounted (e.g.
            /mnt/defectgen-data/neu-det); empty: params data.root (or the ELPV package).
        track: log to MLflow (the secret's tracking URI must reach a server from the pods).

        The params are the compiled ones (`python -m pipelines.compile --params FILE`).
        """
        final = place.cpu(status(params=task_params(params, STATUS_READS), track=track), "status")
        with dsl.ExitHandler(final, name="stages"):
            made: dict = {}
            for stage in STAGES:
                if stage.name == "ingest":
                    place.data(step(stage, made, track, source=source))
                elif stage.name == PER_CLASS[0]:
                    fan_out(made, track)
                elif stage.name not in (*PER_CLASS, "register"):
                    step(stage, made, track)

    return defectgen_pipeline
