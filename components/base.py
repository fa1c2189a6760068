"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def base(
    params: str,
    preprocessed: Input[Dataset],
    track: bool,
    base: Output[Model],
    metrics: Output[Metrics],
):
    """The diffusion prior: pretrain the tiny profile, or check and record an sd15
    checkpoint (defectgen.stages.base)."""
    from defectgen.runner import run_task

    run_task(
        "base",
        params,
        out_dir=base.path,
        inputs={
            "preprocessed": preprocessed.path,
        },
        track=track,
        metrics=metrics,
    )
