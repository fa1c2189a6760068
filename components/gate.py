"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

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
    """Per class: fidelity floors (distance to held-out real images against real-vs-real,
    blurred and noised real images), then whether its images do no harm on val; keeps the
    passing classes' images minus near-duplicates (defectgen.stages.gate). Returns "pass"
    or "fail" for class `label`, for the pipeline's dsl.If."""
    from defectgen.cluster.fanin import verdict
    from defectgen.runner import run_task

    run_task(
        "gate",
        params,
        out_dir=gated.path,
        inputs={
            "preprocessed": preprocessed.path,
            "generated": generated.path,
        },
        track=track,
        metrics=metrics,
    )
    return verdict(gated.path, label)
