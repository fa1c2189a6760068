from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(
    params_yaml: str,
    ingested: Input[Dataset],
    preprocessed: Input[Dataset],
    chosen: Input[Dataset],
    generated: Input[Dataset],
    gated: Input[Dataset],
    evaluation: Input[Dataset],
    synthetic_masks: Input[Dataset],
    image_mask_pairs: Input[Dataset],
    gated_pairs: Input[Dataset],
    segmentation: Input[Dataset],
    detection: Input[Dataset],
    track: bool,
    html: Output[HTML],
    markdown: Output[Markdown],
):
    """The run's HTML report and markdown summary (defectgen.stages.report); the KFP UI
    shows both artifacts."""
    import shutil
    import tempfile
    from pathlib import Path

    from defectgen.runner import run_from_yaml

    out = Path(tempfile.mkdtemp()) / "report"
    run_from_yaml(
        "report",
        params_yaml,
        out_dir=str(out),
        inputs={
            "ingested": ingested.path,
            "preprocessed": preprocessed.path,
            "sweep": chosen.path,
            "generated": generated.path,
            "gated": gated.path,
            "train": evaluation.path,
            "masks": synthetic_masks.path,
            "pairs": image_mask_pairs.path,
            "pairs_gated": gated_pairs.path,
            "segment": segmentation.path,
            "detect": detection.path,
        },
        track=track,
    )
    shutil.copyfile(out / "report.html", html.path)  # KFP renders a file, not a folder
    shutil.copyfile(out / "report.md", markdown.path)
