from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    params_yaml: str,
    preprocessed: Input[Dataset],
    base_model: Input[Model],
    pipeline_key: str,
    track: bool,
    adapters: Output[Model],
    metrics: Output[Metrics],
):
    """Per-class textual inversion + LoRA adapters (defectgen.stages.finetune)."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "finetune",
        params_yaml,
        out_dir=adapters.path,
        inputs={"preprocessed": preprocessed.path, "base": base_model.path},
        pipeline_key=pipeline_key,
        track=track,
        log_metric=metrics.log_metric,
    )
