"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sweep(
    params: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    adapters: Input[Model],
    track: bool,
    sweep: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per class: probe a strength x guidance grid, choose the cell closest to held-out real
    images (defectgen.stages.sweep)."""
    from defectgen.runner import run_task

    run_task(
        "sweep",
        params,
        out_dir=sweep.path,
        inputs={
            "preprocessed": preprocessed.path,
            "base": base.path,
            "adapters": adapters.path,
        },
        track=track,
        metrics=metrics,
    )
