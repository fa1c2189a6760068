"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    params: str,
    base: Input[Model],
    adapters: Input[Model],
    sweep: Input[Dataset],
    gated: Input[Dataset],
    track: bool,
    registry: Output[Dataset],
    metrics: Output[Metrics],
):
    """Every class adapter into the MLflow model registry; champion/challenger by the gate
    (defectgen.stages.register)."""
    from defectgen.runner import run_task

    run_task(
        "register",
        params,
        out_dir=registry.path,
        inputs={
            "base": base.path,
            "adapters": adapters.path,
            "sweep": sweep.path,
            "gated": gated.path,
        },
        track=track,
        metrics=metrics,
    )
