"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

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
    """Classifiers on real vs real+synthetic (and the other conditions in params), best
    epoch on val, scored on the real test split (defectgen.stages.train)."""
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
