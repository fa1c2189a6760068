from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def masks(
    params: str,
    preprocessed: Input[Dataset],
    track: bool,
    masks: Output[Dataset],
    metrics: Output[Metrics],
):
    """New defect masks per class and their quality, or a "skipped" record for a dataset
    without masks (defectgen.stages.masks)."""
    from defectgen.runner import run_task

    run_task(
        "masks",
        params,
        out_dir=masks.path,
        inputs={"preprocessed": preprocessed.path},
        track=track,
        metrics=metrics,
    )
