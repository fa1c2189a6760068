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
    """Synthetic images per class at the chosen settings, with provenance
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
