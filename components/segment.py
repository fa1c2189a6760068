"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def segment(
    params: str,
    preprocessed: Input[Dataset],
    pairs: Input[Dataset],
    pairs_gated: Input[Dataset],
    track: bool,
    segment: Output[Dataset],
    metrics: Output[Metrics],
):
    """COCO export of real + synthetic pairs, and a U-Net per condition (real vs
    real+synthetic) scored on the real test split (defectgen.stages.segment)."""
    from defectgen.runner import run_task

    run_task(
        "segment",
        params,
        out_dir=segment.path,
        inputs={
            "preprocessed": preprocessed.path,
            "pairs": pairs.path,
            "pairs_gated": pairs_gated.path,
        },
        track=track,
        metrics=metrics,
    )
