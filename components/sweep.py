from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sweep(
    params_yaml: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    adapters: Input[Model],
    track: bool,
    sweep: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per-class strength x guidance probes and the chosen cell (defectgen.stages.sweep)."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "sweep",
        params_yaml,
        out_dir=sweep.path,
        inputs={
            "preprocessed": preprocessed.path,
            "base": base.path,
            "adapters": adapters.path,
        },
        track=track,
        log_metric=metrics.log_metric,
    )
