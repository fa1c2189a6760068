"""The run status a cluster run always ends with (the KFP exit handler's task).

Whatever happened to the stages, this writes a short markdown page: the orchestrator's
final state and error, and, with tracking, every stage run under the pipeline's MLflow
parent run (which it tags with the state). The full report needs every stage's output;
when a stage failed, this page says which and why.
"""

from __future__ import annotations

from pathlib import Path

from defectgen.config import Params
from defectgen.io import atomic_write_bytes


def write_status(
    params: Params, *, state: str, job: str, error: str, out_path: Path, track: bool
) -> str:
    """Write the status page to `out_path`; returns its markdown."""
    lines = [
        f"# defectgen run {state}: {params.data.name}",
        "",
        f"- pipeline job: `{job or 'unknown'}`",
        f"- state: **{state}**",
    ]
    if error:
        lines.append(f"- error: {error}")
    if track and params.tracking.enabled:
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
    else:
        lines.append("- MLflow: tracking off (no stage runs to list)")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(out_path), text.encode())
    return text
