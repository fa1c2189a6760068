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
    """The diffusion prior: tiny pretrained here, sd15 checked (defectgen.stages.base)."""
    from defectgen.runner import run_task

    run_task(
        "base",
        params,
        out_dir=base.path,
        inputs={"preprocessed": preprocessed.path},
        track=track,
        metrics=metrics,
    )
