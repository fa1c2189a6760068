from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def segment(
    params_yaml: str,
    preprocessed: Input[Dataset],
    image_mask_pairs: Input[Dataset],
    gated_pairs: Input[Dataset],
    track: bool,
    segmentation: Output[Dataset],
    metrics: Output[Metrics],
):
    """COCO export of real + synthetic pairs and a U-Net per condition, scored on the
    real test split (defectgen.stages.segment)."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "segment",
        params_yaml,
        out_dir=segmentation.path,
        inputs={
            "preprocessed": preprocessed.path,
            "pairs": image_mask_pairs.path,
            "gated": gated_pairs.path,
        },
        track=track,
        log_metric=metrics.log_metric,
    )
