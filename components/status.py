from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def status(
    params: str,
    track: bool,
    final: dsl.PipelineTaskFinalStatus,
    summary: Output[Markdown],
    report: Output[HTML],
):
    """The exit handler: the run's final state, its error and its stage runs, written
    whether the stages succeeded or not; for a run that did not succeed, also the report
    rendered from the finished stages' MLflow runs (defectgen.reports.status)."""
    import shutil
    import tempfile
    from pathlib import Path

    from defectgen.reports.status import write_status
    from defectgen.runner import key_by_run
    from defectgen.scoped import from_task_params

    key_by_run(summary.path)  # its MLflow parent under kfp.local (a temp folder is not)
    out = Path(tempfile.mkdtemp()) / "report"
    write_status(
        from_task_params(params, "status component params"),
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
