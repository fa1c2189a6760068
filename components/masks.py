"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def masks(
    params: str,
    preprocessed: Input[Dataset],
    track: bool,
    masks: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per class: new defect masks from the real train masks (hybrid interpolation,
    perturbation, a DDPM producer) and their quality; a record saying so without masks
    (defectgen.stages.masks)."""
    from defectgen.runner import run_task

    run_task(
        "masks",
        params,
        out_dir=masks.path,
        inputs={
            "preprocessed": preprocessed.path,
        },
        track=track,
        metrics=metrics,
    )
