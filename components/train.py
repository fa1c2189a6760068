from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    params: str,
    preprocessed: Input[Dataset],
    generated: Input[Dataset],
    gated: Input[Dataset],
    track: bool,
    train: Output[Dataset],
    metrics: Output[Metrics],
):
    """Classifiers per condition and seed, scored on the real test split
    (defectgen.stages.train)."""
    from defectgen.runner import run_task

    run_task(
        "train",
        params,
        out_dir=train.path,
        inputs={
            "preprocessed": preprocessed.path,
            "generated": generated.path,
            "gated": gated.path,
        },
        track=track,
        metrics=metrics,
    )
