from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    params: str,
    preprocessed: Input[Dataset],
    base: Input[Model],
    track: bool,
    label: str,
    adapters: Output[Model],
    metrics: Output[Metrics],
):
    """Textual inversion + LoRA adapter of one class, `label` (defectgen.stages.finetune);
    the cluster pipeline runs it once per class."""
    from defectgen.runner import run_task

    run_task(
        "finetune",
        params,
        out_dir=adapters.path,
        inputs={"preprocessed": preprocessed.path, "base": base.path},
        track=track,
        metrics=metrics,
        only_class=label,
    )
