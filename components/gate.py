from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    params_yaml: str,
    preprocessed: Input[Dataset],
    generated: Input[Dataset],
    pipeline_key: str,
    track: bool,
    gated: Output[Dataset],
    metrics: Output[Metrics],
):
    """Per-class verdicts on the synthetic images (defectgen.stages.gate)."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "gate",
        params_yaml,
        out_dir=gated.path,
        inputs={"preprocessed": preprocessed.path, "generated": generated.path},
        pipeline_key=pipeline_key,
        track=track,
        log_metric=metrics.log_metric,
    )
