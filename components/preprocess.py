"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(
    params: str,
    ingested: Input[Dataset],
    track: bool,
    preprocessed: Output[Dataset],
    metrics: Output[Metrics],
):
    """ROI crop/tile, resize, colour, stable split, few-shot subset
    (defectgen.stages.preprocess)."""
    from defectgen.runner import run_task

    run_task(
        "preprocess",
        params,
        out_dir=preprocessed.path,
        inputs={
            "ingested": ingested.path,
        },
        track=track,
        metrics=metrics,
    )
