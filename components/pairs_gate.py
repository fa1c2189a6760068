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
    """The gate, unchanged, on the pairs' images (defectgen.stages.pairs_gate), every class."""
    from defectgen.runner import run_task

    run_task(
        "pairs_gate",
        params,
        out_dir=pairs_gated.path,
        inputs={"preprocessed": preprocessed.path, "pairs": pairs.path},
        track=track,
        metrics=metrics,
    )
