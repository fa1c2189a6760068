from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs_gate(
    params_yaml: str,
    preprocessed: Input[Dataset],
    image_mask_pairs: Input[Dataset],
    track: bool,
    gated_pairs: Output[Dataset],
    metrics: Output[Metrics],
):
    """The gate, unchanged, on the pairs' images (defectgen.stages.gate), every class."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "pairs_gate",
        params_yaml,
        out_dir=gated_pairs.path,
        inputs={"preprocessed": preprocessed.path, "generated": image_mask_pairs.path},
        track=track,
        log_metric=metrics.log_metric,
    )
