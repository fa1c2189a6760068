from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(
    params_yaml: str,
    ingested: Input[Dataset],
    track: bool,
    preprocessed: Output[Dataset],
    metrics: Output[Metrics],
):
    """ROI crop/tile, resize, colour, split, few-shot subset (defectgen.stages.preprocess)."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "preprocess",
        params_yaml,
        out_dir=preprocessed.path,
        inputs={"ingested": ingested.path},
        track=track,
        log_metric=metrics.log_metric,
    )
