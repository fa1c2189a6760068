"""Every stage, declared once (`STAGES`): its CLI inputs, the params it reads, the report
files and curves the runner logs, and the module that runs it. The CLI, the KFP
components, MLflow params, every stage's resume key and dvc.yaml (all of it:
`python -m pipelines.dvc_stages`) are derived from or checked against it
(tests/test_declarations.py, tests/cluster/test_compiled_pipeline.py).

Light on purpose (no torch): the CLI and the KFP components import it before any stage.
A stage never looks itself up here: the runner hands a resuming stage its `params_key`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from defectgen import artifacts as art
from defectgen.config import Params
from defectgen.scoped import ALL, scoped


@dataclass(frozen=True)
class Stage:
    """One stage, declared once: what the CLI, KFP, MLflow, dvc.yaml and every resume key
    know of it. `reads` are the params keys the stage's code (and the helpers it calls)
    reads: MLflow logs them, resume keys hash them, dvc.yaml lists them and each KFP task
    receives only them, so a stage reruns only when one of them changes.
    tests/test_declarations.py checks they are exactly what the code reads
    (pipelines.params_read), and the stage runs on a view of the params that refuses any
    other key (defectgen.scoped)."""

    name: str
    help: str
    inputs: tuple[tuple[str, bool, str], ...]  # (artifact name = option name, required, help)
    reads: tuple[str, ...]  # params sections or dotted keys, or ("*",): every parameter
    reports: tuple[str, ...]  # files under --out logged to MLflow as artifacts
    curves: tuple[str, ...] = ()  # folders of <series>.csv (step, loss): MLflow step metrics
    module: str = ""  # defectgen.stages.<module> runs it (default: the name)
    output: str = ""  # the artifact it writes (its --out): what its consumers' inputs name
    # (input artifact, the module's run argument) where they differ: a module run by two
    # stages (the gate, on generated images and on pairs) keeps one signature
    arguments: tuple[tuple[str, str], ...] = ()
    # a {metrics, tags} JSON under --out that, with the reports, also goes to the
    # pipeline's MLflow parent run (the report's answer and verdicts)
    parent: str = ""
    # a JSON under --out whose "tags" ({name: value}) go on the stage's own MLflow run
    # (the gate's verdict and rule per class)
    tags: str = ""
    # DVC plots of files under --out besides the curves: (path, template, x, y)
    plots: tuple[tuple[str, str, str, str], ...] = ()
    # what it makes is not a reproducible file (registry versions; a page carrying the
    # git sha and MLflow run ids): dvc.yaml gives it no outputs or metrics file and runs
    # it on every `dvc repro`
    always_runs: bool = False
    # it resumes a killed run: Stage.runner hands its run `params_key`, the hash of the
    # params it reads, which it joins to its inputs' digests for its resume key
    resumes: bool = False

    def __post_init__(self):
        if not self.output:
            raise ValueError(f"stage {self.name!r} declares no output artifact")

    @property
    def folder(self) -> str:
        """Where dvc.yaml's stages write its output (relative to the repository)."""
        return f"data/{self.output}"

    @property
    def metrics_file(self) -> str:
        """dvc.yaml's metrics file of the stage (none for an always_runs stage)."""
        return "" if self.always_runs else f"metrics/{self.name}.json"

    @property
    def module_name(self) -> str:
        return f"defectgen.stages.{self.module or self.name}"

    def runner(self, params: Params, **kw) -> dict[str, float]:
        """stages.<module>.run, imported on the first call: the CLI starts without loading
        torch or diffusers for a stage it does not run."""
        named = dict(self.arguments)
        kw = {named.get(k, k): v for k, v in kw.items()}
        if self.resumes:
            kw["params_key"] = self.params_hash(params)
        # the stage sees only the keys it declares (scoped: any other read raises)
        view = scoped(params, self.reads, self.name)
        return importlib.import_module(self.module_name).run(view, **kw)

    def params_hash(self, params: Params) -> str:
        """The hash of what this stage reads: part of its resume key."""
        return params.section_hash(*self.reads)


# keys shared readers read, declared once for every stage that uses them
DEVICE = ("model.device", "model.dtype")  # core.device.runtime
# the diffusion pipeline's loading and speed settings (core.diffusion.models)
DIFFUSION = (
    *DEVICE,
    "model.profile",
    "model.compile",
    "model.fuse_qkv",
    "model.gradient_checkpointing",
)
# reference.Reference: the extractor, how many real images and the near-duplicate ratio
REFERENCE = ("gate.extractor", "gate.inception_weights", "gate.max_images", "gate.near_duplicate")
# generate.settings and the sampler (the sweep samples as generate does)
SAMPLING = (
    "generate.mode",
    "generate.steps",
    "generate.batch_size",
    "generate.strength",
    "generate.guidance",
    "generate.per_class",
)

# the KFP tasks that run no stage: the classes the pipeline fans out over
# (cluster.fanin.classes) and the exit handler, which renders the report (status)
FANOUT_READS = ("finetune.classes", "data.normal_classes")
STATUS_READS = (ALL,)

PREPROCESSED = ("preprocessed", True, "the preprocess stage's output folder")
BASE = ("base", True, "the base stage's output folder")
ADAPTERS = ("adapters", True, "the finetune stage's output folder")
GENERATED = ("generated", True, "the generate stage's output folder (the images)")
GATED = ("gated", True, "the gate stage's output folder (which images passed)")

STAGES = (
    Stage(
        "ingest",
        "read a raw dataset (folders, image+mask, VOC, COCO, ELPV) into a manifest",
        (("source", False, "raw dataset folder (default: params data.root)"),),
        ("data", "ingest"),
        (art.INGEST_JSON,),
        output="ingested",
    ),
    Stage(
        "preprocess",
        "ROI crop/tile, resize, colour, stable split, few-shot subset",
        (("ingested", True, "the ingest stage's output folder"),),
        ("seed", "data.normal_classes", "preprocess"),
        (art.SPLIT_COUNTS_JSON,),
        output="preprocessed",
    ),
    Stage(
        "masks",
        "per class: new defect masks from the real train masks (hybrid interpolation, "
        "perturbation, a DDPM producer) and their quality; a record saying so without masks",
        (PREPROCESSED,),
        ("seed", "data.normal_classes", *DEVICE, "masks", "finetune.data", *REFERENCE),
        (art.MASKS_JSON, art.GRIDS_DIR),
        curves=(art.CURVES_DIR,),
        output="masks",
        resumes=True,
    ),
    Stage(
        "base",
        "the diffusion prior: pretrain the tiny profile, or check and record an sd15 checkpoint",
        (PREPROCESSED,),
        ("seed", "model", "base", "preprocess.image_size"),
        (art.BASE_JSON, art.SAMPLES_PNG),
        curves=(art.CURVES_DIR,),
        output="base",
        resumes=True,
    ),
    Stage(
        "finetune",
        "per class: textual inversion, then LoRA (StableSDG), into diffusers adapter files",
        (PREPROCESSED, BASE),
        ("seed", "data.normal_classes", *DIFFUSION, "finetune", "preprocess.image_size"),
        (art.FINETUNE_JSON,),
        curves=(art.CURVES_DIR,),
        output="adapters",
        resumes=True,
    ),
    Stage(
        "sweep",
        "per class: probe a strength x guidance grid, choose the cell closest to held-out "
        "real images",
        (PREPROCESSED, BASE, ADAPTERS),
        ("seed", *DIFFUSION, "finetune.data", "sweep", *SAMPLING, *REFERENCE, "gate.kid_subsets"),
        (art.CHOSEN_JSON, art.SWEEP_PARQUET, art.HEATMAPS_DIR, art.PROBES_DIR),
        output="sweep",
        resumes=True,
        plots=((art.HEATMAPS_DIR, "heatmap", "guidance", "strength"),),  # .dvc/plots/
    ),
    Stage(
        "generate",
        "per class: image-oriented (img2img) or txt2img generation with the class's adapter",
        (
            PREPROCESSED,
            BASE,
            ADAPTERS,
            ("sweep", False, "the sweep stage's output folder (default: generate.per_class)"),
        ),
        ("seed", *DIFFUSION, "finetune.data", "generate"),
        (art.GENERATE_JSON, art.SAMPLES_PNG),
        output="generated",
        resumes=True,
    ),
    Stage(
        "gate",
        "per class: fidelity floors (distance to held-out real images against "
        "real-vs-real, blurred and noised real images), then whether its images do no harm "
        "on val; keeps the passing classes' images minus near-duplicates",
        (PREPROCESSED, ("generated", True, "the generate stage's output folder")),
        ("seed", *DEVICE, "finetune.data", "gate", "classical", "train.primary"),
        (art.GATE_JSON, art.GATE_CSV),
        output="gated",
        tags=art.GATE_JSON,
    ),
    Stage(
        "pairs",
        "per class: a ControlNet from the base UNet trained on real (mask, image) pairs, then "
        "self-annotated image + mask pairs from the masks stage's masks",
        (PREPROCESSED, BASE, ("masks", True, "the masks stage's output folder")),
        ("seed", "data.normal_classes", *DIFFUSION, "pairs"),
        (art.PAIRS_JSON, art.GRIDS_DIR),
        curves=(art.CURVES_DIR,),
        output="pairs",
        resumes=True,
    ),
    Stage(
        "pairs_gate",
        "the gate, unchanged, on the pairs stage's images: per class distance to held-out "
        "real images against real-vs-real",
        (PREPROCESSED, ("pairs", True, "the pairs stage's output folder")),
        ("seed", *DEVICE, "finetune.data", "gate", "classical", "train.primary"),
        (art.GATE_JSON, art.GATE_CSV),
        module="gate",
        tags=art.GATE_JSON,
        arguments=(("pairs", "generated"),),
        output="pairs_gated",
    ),
    Stage(
        "segment",
        "COCO export of real + synthetic pairs, and a U-Net per condition (real vs "
        "real+synthetic) scored on the real test split",
        (
            PREPROCESSED,
            ("pairs", True, "the pairs stage's output folder"),
            ("pairs_gated", True, "the pairs_gate stage's output folder"),
        ),
        (
            "seed",
            *DEVICE,
            "data.normal_classes",
            "pairs.data",
            "segment",
            "classical",
            "copy_paste",
        ),
        (art.SEGMENT_JSON, art.COMPARISON_CSV),
        curves=(art.CURVES_DIR,),
        output="segment",
        resumes=True,
    ),
    Stage(
        "train",
        "classifiers on real vs real+synthetic (and the other conditions in params), "
        "best epoch on val, scored on the real test split",
        (
            PREPROCESSED,
            GENERATED,
            GATED,
        ),
        ("seed", *DEVICE, "train", "classical"),
        (art.EVAL_JSON, art.COMPARISON_CSV, art.CONFUSION_JSON, art.RUNS_PARQUET),
        curves=(art.CURVES_DIR,),
        output="train",
        resumes=True,
        plots=((art.COMPARISON_CSV, "bar_horizontal", "accuracy", "run"),),
    ),
    Stage(
        "detect",
        "detectors (Faster R-CNN / Mask R-CNN) on real vs real+synthetic with the matched "
        "controls, scored on the real test split with COCOeval; skipped without masks or boxes",
        (
            PREPROCESSED,
            GENERATED,
            GATED,
            ("pairs", True, "the pairs stage's output folder (image+mask pairs)"),
            ("pairs_gated", True, "the pairs_gate stage's output folder"),
        ),
        ("seed", *DEVICE, "data.normal_classes", "detect", "classical", "copy_paste"),
        (art.DETECT_JSON, art.COMPARISON_CSV, art.RUNS_PARQUET, art.BOXES_PNG),
        curves=(art.CURVES_DIR,),
        output="detect",
        resumes=True,
    ),
    Stage(
        "register",
        "every class adapter into the MLflow model registry; champion/challenger by the gate",
        (
            BASE,
            ADAPTERS,
            ("sweep", True, "the sweep stage's output folder (the chosen settings)"),
            ("gated", True, "the gate stage's output folder (the verdicts)"),
        ),
        (ALL,),  # the registered version records the hash of every parameter
        (art.REGISTRY_JSON,),
        output="registry",
        always_runs=True,
    ),
    Stage(
        "report",
        "one self-contained HTML page and a markdown summary of the run",
        (
            ("ingested", True, "the ingest stage's output folder"),
            PREPROCESSED,
            ("sweep", True, "the sweep stage's output folder"),
            ("generated", True, "the generate stage's output folder"),
            ("gated", True, "the gate stage's output folder"),
            ("train", True, "the train stage's output folder"),
            ("masks", False, "the masks stage's output folder"),
            ("pairs", False, "the pairs stage's output folder"),
            ("pairs_gated", False, "the pairs_gate stage's output folder"),
            ("segment", False, "the segment stage's output folder"),
            ("detect", False, "the detect stage's output folder"),
        ),
        (ALL,),  # the page shows the hash of every parameter
        (art.REPORT_HTML, art.REPORT_MD, art.PARENT_JSON),
        output="report",
        parent=art.PARENT_JSON,
        always_runs=True,
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages: {[s.name for s in STAGES]}")


def producer(artifact: str) -> Stage:
    """The stage whose output is `artifact`."""
    for stage in STAGES:
        if stage.output == artifact:
            return stage
    raise KeyError(f"no stage writes {artifact!r}; artifacts: {[s.output for s in STAGES]}")


RAW = "source"  # ingest's input: the raw dataset, which no stage writes


def upstream(stage: Stage) -> dict[str, str]:
    """Per input of `stage` (its artifact name), the stage that writes it."""
    return {opt: producer(opt).name for opt, _, _ in stage.inputs if opt != RAW}


def graph() -> list[tuple[str, dict[str, str]]]:
    """The DAG in declaration order (each stage after its inputs' producers): (stage,
    {input artifact: producing stage}); what every runner of the whole DAG walks."""
    return [(s.name, upstream(s)) for s in STAGES]


def path(start: str, end: str) -> list[str]:
    """The stages on some path from `start` to `end` (both included), in DAG order: the
    part of the DAG a benchmark or an ablation runs (e.g. path("ingest", "train") is the
    classification path)."""
    below = {start}  # start and what depends on it
    for name, inputs in graph():
        if set(inputs.values()) & below:
            below.add(name)
    above = {end}  # end and what it depends on
    for name, inputs in reversed(graph()):
        if name in above:
            above |= set(inputs.values())
    return [name for name, _ in graph() if name in below & above]
