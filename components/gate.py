from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    params_yaml: str,
    preprocessed: Input[Dataset],
    generated: Input[Dataset],
    track: bool,
    label: str,
    gated: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """The verdict on one class's synthetic images (defectgen.stages.gate); returns
    "pass" or "fail" for the pipeline's dsl.If."""
    from defectgen.cluster.fanin import verdict
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "gate",
        params_yaml,
        out_dir=gated.path,
        inputs={"preprocessed": preprocessed.path, "generated": generated.path},
        track=track,
        log_metric=metrics.log_metric,
    )
    return verdict(gated.path, label)
