"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def detect(
    params: str,
    preprocessed: Input[Dataset],
    generated: Input[Dataset],
    gated: Input[Dataset],
    pairs: Input[Dataset],
    pairs_gated: Input[Dataset],
    track: bool,
    detect: Output[Dataset],
    metrics: Output[Metrics],
):
    """Detectors (Faster R-CNN / Mask R-CNN) on real vs real+synthetic with the matched
    controls, scored on the real test split with COCOeval; skipped without masks or boxes
    (defectgen.stages.detect)."""
    from defectgen.runner import run_task

    run_task(
        "detect",
        params,
        out_dir=detect.path,
        inputs={
            "preprocessed": preprocessed.path,
            "generated": generated.path,
            "gated": gated.path,
            "pairs": pairs.path,
            "pairs_gated": pairs_gated.path,
        },
        track=track,
        metrics=metrics,
    )
