from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    params_yaml: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    track: bool,
    label: str,
    adapters: Output[Model],
    metrics: Output[Metrics],
):
    """Textual inversion + LoRA adapter of one class, `label` (defectgen.stages.finetune);
    the cluster pipeline runs it once per class."""
    from defectgen.runner import run_from_yaml

    run_from_yaml(
        "finetune",
        params_yaml,
        out_dir=adapters.path,
        inputs={"preprocessed": preprocessed.path, "base": base.path},
        track=track,
        log_metric=metrics.log_metric,
        only_class=label,
    )
