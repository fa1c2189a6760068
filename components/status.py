from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def status(
    params_yaml: str,
    track: bool,
    final: dsl.PipelineTaskFinalStatus,
    summary: Output[Markdown],
    report: Output[HTML],
):
    """The exit handler: the run's final state, its error and its stage runs, written
    whether the stages succeeded or not; for a run that did not succeed, also the report
    rendered from the finished stages' MLflow runs (defectgen.status)."""
    import shutil
    import tempfile
    from pathlib import Path

    from defectgen.runner import params_from_yaml
    from defectgen.status import write_status

    out = Path(tempfile.mkdtemp()) / "report"
    write_status(
        params_from_yaml(params_yaml, "status component params"),
        state=final.state,
        job=final.pipeline_job_resource_name,
        error=final.error_message or "",
        out_path=summary.path,
        track=track,
        report_dir=out,
    )
    if (out / "report.html").is_file():
        shutil.copyfile(out / "report.html", report.path)
    else:  # KFP uploads every declared output, so write one in every case
        Path(report.path).write_text(
            f"<!DOCTYPE html><title>{final.state}</title><p>No report from the exit handler: "
            f"{'the report task has it' if final.state == 'SUCCEEDED' else 'see the summary'}"
            ".</p>",
            encoding="utf-8",
        )
