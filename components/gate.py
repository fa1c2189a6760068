from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    params: str,
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
    from defectgen.runner import run_task

    run_task(
        "gate",
        params,
        out_dir=gated.path,
        inputs={"preprocessed": preprocessed.path, "generated": generated.path},
        track=track,
        metrics=metrics,
    )
    return verdict(gated.path, label)
