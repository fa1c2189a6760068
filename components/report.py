"""Generated from the stage declaration (src/defectgen/declarations.py) by
`python -m pipelines.kfp_components --write`: change the declaration, not this file."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    params: str,
    ingested: Input[Dataset],
    preprocessed: Input[Dataset],
    sweep: Input[Dataset],
    generated: Input[Dataset],
    gated: Input[Dataset],
    train: Input[Dataset],
    masks: Input[Dataset],
    pairs: Input[Dataset],
    pairs_gated: Input[Dataset],
    segment: Input[Dataset],
    detect: Input[Dataset],
    track: bool,
    html: Output[HTML],
    markdown: Output[Markdown],
):
    """One self-contained HTML page and a markdown summary of the run
    (defectgen.stages.report). The KFP UI shows the page and the summary."""
    import shutil
    import tempfile
    from pathlib import Path

    from defectgen.runner import key_by_run, run_task

    key_by_run(html.path)  # its MLflow parent under kfp.local (a temp folder is not)
    out = Path(tempfile.mkdtemp()) / "report"
    run_task(
        "report",
        params,
        out_dir=str(out),
        inputs={
            "ingested": ingested.path,
            "preprocessed": preprocessed.path,
            "sweep": sweep.path,
            "generated": generated.path,
            "gated": gated.path,
            "train": train.path,
            "masks": masks.path,
            "pairs": pairs.path,
            "pairs_gated": pairs_gated.path,
            "segment": segment.path,
            "detect": detect.path,
        },
        track=track,
    )
    shutil.copyfile(out / "report.html", html.path)  # KFP renders a file, not a folder
    shutil.copyfile(out / "report.md", markdown.path)
