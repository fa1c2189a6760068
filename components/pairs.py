"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs(
    params: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    masks: Input[Dataset],
    track: bool,
    pairs: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per class: a ControlNet from the base UNet trained on real (mask, image) pairs, then
    self-annotated image + mask pairs from the masks stage's masks
    (defectgen.stages.pairs)."""
    from defectgen.runner import run_task

    run_task(
        "pairs",
        params,
        out_dir=pairs.path,
        inputs={
            "preprocessed": preprocessed.path,
            "base": base.path,
            "masks": masks.path,
        },
        track=track,
        metrics=metrics,
    )
