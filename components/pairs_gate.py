"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs_gate(
    params: str,
    preprocessed: Input[Dataset],
    pairs: Input[Dataset],
    track: bool,
    pairs_gated: Output[Dataset],
    metrics: Output[Metrics],
):
    """The gate, unchanged, on the pairs stage's images: per class distance to held-out real
    images against real-vs-real (defectgen.stages.gate)."""
    from defectgen.runner import run_task

    run_task(
        "pairs_gate",
        params,
        out_dir=pairs_gated.path,
        inputs={
            "preprocessed": preprocessed.path,
            "pairs": pairs.path,
        },
        track=track,
        metrics=metrics,
    )
