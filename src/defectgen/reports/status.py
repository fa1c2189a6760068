"""The run status and report a cluster run always ends with (the KFP exit handler's task).

Whatever happened to the stages, this writes a short markdown page: the orchestrator's
final state and error, and, with tracking, every stage run under the pipeline's MLflow
parent run (which it tags with the state).

When the run did not succeed, the report task never ran, so this also renders the report
from what the finished stages logged to MLflow (every stage logs the files the report
reads): per-class runs of one stage are merged as the pipeline's fan-in would, the
sections with inputs are rendered and the missing stages are named. An exit task cannot
take the stages' artifacts (KFP), and MLflow is the store every pod reaches; without
tracking there is nothing to read, and the page says so. A stage served from KFP's cache
did not run in this pipeline run, so it has no run to read: submit with caching off when
a complete failure report matters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from defectgen.atomic import atomic_write_bytes
from defectgen.config import Params


def _without_a_run(runs: list[dict[str, str]]) -> list[str]:
    """The stages, in pipeline order, with no MLflow run under this pipeline run."""
    from defectgen.declarations import STAGES

    ran = {r["stage"] for r in runs}
    return [s.name for s in STAGES if s.name not in ran]


def _render_report(params: Params, report_dir: Path) -> str:
    """The report from the finished stages' MLflow artifacts into `report_dir`, as the
    report stage's own MLflow run under the parent; returns one line for the page."""
    from defectgen import tracking
    from defectgen.cluster import fanin
    from defectgen.declarations import upstream
    from defectgen.runner import execute, get_stage

    with tempfile.TemporaryDirectory(prefix="defectgen-status-") as tmp:
        # every report input (the optional mask branch and detect too) -> its stage
        report = get_stage("report")
        stages = upstream(report)
        required = [a for a, needed, _ in report.inputs if needed]
        found = tracking.finished_stage_artifacts(params, tuple(stages.values()), Path(tmp))
        inputs = {}
        for key, stage in stages.items():
            if stage in found:
                inputs[key] = Path(tmp) / "merged" / stage
                fanin.merge(found[stage], inputs[key])
        metrics, _ = execute(report, params, out_dir=report_dir, inputs=inputs, track=True)
    n_missing = int(metrics["n_missing_inputs"])
    return (
        f"- report: rendered from the finished stages' MLflow runs "
        f"({len(required) - n_missing} of {len(required)} report inputs found)"
    )


def write_status(
    params: Params,
    *,
    state: str,
    job: str,
    error: str,
    out_path: Path,
    track: bool,
    report_dir: Path | None = None,
) -> str:
    """Write the status page to `out_path`; returns its markdown.

    With `report_dir`, tracking on and a state other than SUCCEEDED, the partial report
    is rendered there too (report.html, report.md).
    """
    lines = [
        f"# defectgen run {state}: {params.data.name}",
        "",
        f"- pipeline job: `{job or 'unknown'}`",
        f"- state: **{state}**",
    ]
    if error:
        lines.append(f"- error: {error}")
    tracked = track and params.tracking.enabled
    if report_dir is not None and state != "SUCCEEDED":
        if not tracked:
            lines.append(
                "- report: not rendered; without tracking the finished stages' outputs are "
                "only in their own tasks' artifacts"
            )
        else:
            try:
                lines.append(_render_report(params, Path(report_dir)))
            except Exception as exc:
                # Whatever breaks the report (a corrupt artifact, MLflow unreachable), the
                # status page is the one output a failed run must still end with.
                lines.append(f"- report: not rendered ({type(exc).__name__}: {exc})")
    if tracked:
        from defectgen import tracking

        runs = tracking.finish_pipeline(params, state, error)
        lines += [
            f"- MLflow: experiment `{params.tracking.experiment}`, pipeline key "
            f"`{tracking.pipeline_key(params)}`",
            "",
            "| stage | MLflow status | wall s |",
            "|---|---|---|",
            *(f"| {r['stage']} | {r['status']} | {r['wall_s']} |" for r in runs),
        ]
        if absent := _without_a_run(runs):
            lines += [
                "",
                f"No run in this pipeline run: {', '.join(absent)} (served from KFP's cache, "
                "not reached, or, for register, no class passed the gate).",
            ]
    else:
        lines.append("- MLflow: tracking off (no stage runs to list)")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(out_path), text.encode())
    return text
