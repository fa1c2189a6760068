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
    """Detectors per condition and seed, scored on the real test split with COCOeval
    (defectgen.stages.detect); a "skipped" record without masks or boxes."""
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
