"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    params: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    track: bool,
    label: str,
    adapters: Output[Model],
    metrics: Output[Metrics],
):
    """Per class: textual inversion, then LoRA (StableSDG), into diffusers adapter files
    (defectgen.stages.finetune). Adapts the one class `label` (the pipeline runs it once
    per class)."""
    from defectgen.runner import run_task

    run_task(
        "finetune",
        params,
        out_dir=adapters.path,
        inputs={
            "preprocessed": preprocessed.path,
            "base": base.path,
        },
        track=track,
        metrics=metrics,
        only_class=label,
    )
