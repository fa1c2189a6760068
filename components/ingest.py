"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    params: str,
    source: str,
    track: bool,
    ingested: Output[Dataset],
    metrics: Output[Metrics],
):
    """Read a raw dataset (folders, image+mask, VOC, COCO, ELPV) into a manifest
    (defectgen.stages.ingest)."""
    from defectgen.runner import run_task

    run_task(
        "ingest",
        params,
        out_dir=ingested.path,
        inputs={
            "source": source,
        },
        track=track,
        metrics=metrics,
    )
