"""The KFP v2 pipeline: the stages of dvc.yaml, with the per-class work fanned out.

    ingest -> preprocess -> masks -> pairs (needs base) -> pairs_gate -> segment
                             (the mask branch; "skipped" records without masks)
                          -> base -> classes
      ParallelFor class (at most cluster.parallelism at once): one_class's plain tasks
        finetune -> sweep -> generate -> gate -> If verdict == "pass": register
        (collected: the chosen cell, the generated and the gated images)
      merge (dsl.Collected) the chosen cells, generated and gated images
      -> train, detect (also reads the mask branch's pairs) -> report
    exit handler: status (always: the final state and every stage run; for a run that
      did not succeed, also the report, from what the finished stages logged to MLflow)

Params are fixed at compile time (`build(params)`): each task gets as its `params` input
only the keys its stage reads (declarations: Stage.reads; scoped.task_params renders
them), so KFP's cache key, which covers a task's inputs, changes only when one of those
keys does: a gate rule edited and recompiled reruns gate and what follows it, while base,
finetune, sweep and generate are served from the cache. Placement comes from params
`cluster` (`Placement`): GPU
tasks request accelerators and carry the GPU node selector, tolerations, /dev/shm,
retries with backoff and a timeout; CPU tasks carry none of the GPU settings, so a
tainted GPU pool never runs them. MLflow credentials come from the Kubernetes secret
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

from kfp import dsl, kubernetes
from kfp.dsl import graph_component

from components.base import base
from components.detect import detect
from components.fanin import classes, merge_datasets
from components.finetune import finetune
from components.gate import gate
from components.generate import generate
from components.ingest import ingest
from components.masks import masks
from components.pairs import pairs
from components.pairs_gate import pairs_gate
from components.preprocess import preprocess
from components.register import register
from components.report import report
from components.segment import segment
from components.status import status
from components.sweep import sweep
from components.train import train
from defectgen.cluster import CLUSTER_ENV
from defectgen.config import ClusterConfig, Params
from defectgen.declarations import FANOUT_READS, STATUS_READS, get_stage
from defectgen.runner import PIPELINE_KEY_ENV, PIPELINE_NAME
from defectgen.scoped import task_params

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
    """The pipeline for `params`, placed on the cluster that params `cluster` describes."""
    cluster = params.cluster
    place = Placement(cluster)

    def inputs(stage: str, track) -> dict:
        """A stage task's params input (the keys the stage reads) and `track`."""
        return {"params": task_params(params, get_stage(stage).reads), "track": track}

    def one_class(track, label, preprocessed, base) -> dict:
        """One class's tasks in the loop body: finetune -> sweep -> generate -> gate ->
        register if the gate passed it; returns its sweep, generated and gated outputs.
        Plain tasks, not a nested pipeline: a pipeline inside a ParallelFor does not run
        on every backend (kubeflow/pipelines#10039)."""
        adapted = place.gpu(
            finetune(
                **inputs("finetune", track), preprocessed=preprocessed, base=base, label=label
            ),
            "finetune",
        )
        adapters = adapted.outputs["adapters"]
        swept = place.gpu(
            sweep(
                **inputs("sweep", track), preprocessed=preprocessed, base=base, adapters=adapters
            ),
            "sweep",
        )
        chosen = swept.outputs["sweep"]
        gen = place.gpu(
            generate(
                **inputs("generate", track),
                preprocessed=preprocessed,
                base=base,
                adapters=adapters,
                sweep=chosen,
            ),
            "generate",
        )
        judged = place.gpu(
            gate(
                **inputs("gate", track),
                preprocessed=preprocessed,
                generated=gen.outputs["generated"],
                label=label,
            ),
            "gate",
        )
        with dsl.If(judged.outputs["Output"] == "pass", name="passed-gate"):
            place.cpu(
                register(
                    **inputs("register", track),
                    base=base,
                    adapters=adapters,
                    sweep=chosen,
                    gated=judged.outputs["gated"],
                ),
                "register",
            )
        return {
            "sweep": chosen,
            "generated": gen.outputs["generated"],
            "gated": judged.outputs["gated"],
        }

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
            ing = place.data(place.cpu(ingest(**inputs("ingest", track), source=source), "ingest"))
            pre = place.cpu(
                preprocess(**inputs("preprocess", track), ingested=ing.outputs["ingested"]),
                "preprocess",
            )
            preprocessed = pre.outputs["preprocessed"]
            masked = place.gpu(masks(**inputs("masks", track), preprocessed=preprocessed), "masks")
            prior = place.gpu(base(**inputs("base", track), preprocessed=preprocessed), "base")
            base_model = prior.outputs["base"]
            paired = place.gpu(
                pairs(
                    **inputs("pairs", track),
                    preprocessed=preprocessed,
                    base=base_model,
                    masks=masked.outputs["masks"],
                ),
                "pairs",
            )
            image_mask_pairs = paired.outputs["pairs"]
            pairs_judged = place.gpu(
                pairs_gate(
                    **inputs("pairs_gate", track), preprocessed=preprocessed, pairs=image_mask_pairs
                ),
                "pairs_gate",
            )
            segmented = place.gpu(
                segment(
                    **inputs("segment", track),
                    preprocessed=preprocessed,
                    pairs=image_mask_pairs,
                    pairs_gated=pairs_judged.outputs["pairs_gated"],
                ),
                "segment",
            )
            labels = place.cpu(
                classes(params=task_params(params, FANOUT_READS), preprocessed=preprocessed),
                "classes",
            )

            with dsl.ParallelFor(labels.output, parallelism=cluster.parallelism) as label:
                per_class = one_class(track, label, preprocessed, base_model)

            def fan_in(output: str):
                """The loop's per-class `output`s, merged into one folder."""
                merged = merge_datasets(parts=dsl.Collected(per_class[output]))
                return place.cpu(merged, f"merge {output}").outputs["merged"]

            chosen = fan_in("sweep")
            generated = fan_in("generated")
            gated = fan_in("gated")
            trained = place.gpu(
                train(
                    **inputs("train", track),
                    preprocessed=preprocessed,
                    generated=generated,
                    gated=gated,
                ),
                "train",
            )
            detected = place.gpu(
                detect(
                    **inputs("detect", track),
                    preprocessed=preprocessed,
                    generated=generated,
                    gated=gated,
                    pairs=image_mask_pairs,
                    pairs_gated=pairs_judged.outputs["pairs_gated"],
                ),
                "detect",
            )
            place.cpu(
                report(
                    **inputs("report", track),
                    ingested=ing.outputs["ingested"],
                    preprocessed=preprocessed,
                    sweep=chosen,
                    generated=generated,
                    gated=gated,
                    train=trained.outputs["train"],
                    masks=masked.outputs["masks"],
                    pairs=image_mask_pairs,
                    pairs_gated=pairs_judged.outputs["pairs_gated"],
                    segment=segmented.outputs["segment"],
                    detect=detected.outputs["detect"],
                ),
                "report",
            )

    return defectgen_pipeline
