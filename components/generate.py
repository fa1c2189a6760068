"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def generate(
    params: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    adapters: Input[Model],
    sweep: Input[Dataset],
    track: bool,
    generated: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per class: image-oriented (img2img) or txt2img generation with the class's adapter
    (defectgen.stages.generate)."""
    from defectgen.runner import run_task

    run_task(
        "generate",
        params,
        out_dir=generated.path,
        inputs={
            "preprocessed": preprocessed.path,
            "base": base.path,
            "adapters": adapters.path,
            "sweep": sweep.path,
        },
        track=track,
        metrics=metrics,
    )
