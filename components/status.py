from kfp import dsl
from kfp.dsl import Markdown, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def status(
    params_yaml: str,
    pipeline_key: str,
    track: bool,
    final: dsl.PipelineTaskFinalStatus,
    summary: Output[Markdown],
):
    """The exit handler: the run's final state, its error and its stage runs
    (defectgen.status), written whether the stages succeeded or not."""
    import os

    from defectgen.runner import params_from_yaml
    from defectgen.status import write_status

    if pipeline_key:
        os.environ["DEFECTGEN_PIPELINE_KEY"] = pipeline_key
    write_status(
        params_from_yaml(params_yaml, "status component params"),
        state=final.state,
        job=final.pipeline_job_resource_name,
        error=final.error_message or "",
        out_path=summary.path,
        track=track,
    )
