from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    params_yaml: str,
    base: Input[Model],
    adapters: Input[Model],
    sweep: Input[Dataset],
    gated: Input[Dataset],
    track: bool,
    registry: Output[Dataset],
    metrics: Output[Metrics],
):
    """Class adapters into the MLflow model registry, promoted by the gate
    (defectgen.stages.register); nothing is registered without tracking."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "register",
        params_yaml,
        out_dir=registry.path,
        inputs={
            "base": base.path,
            "adapters": adapters.path,
            "sweep": sweep.path,
            "gated": gated.path,
        },
        track=track,
        log_metric=metrics.log_metric,
    )
