from typing import List  # noqa: UP035 (kfp reads these annotations)

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def classes(params: str, preprocessed: Input[Dataset]) -> List[str]:  # noqa: UP006
    """The classes the pipeline fans out over (defectgen.cluster.fanin.classes)."""
    from defectgen.cluster.fanin import classes
    from defectgen.declarations import FANOUT_READS
    from defectgen.scoped import from_task_params, scoped

    handed = from_task_params(params, "classes component params")
    return classes(scoped(handed, FANOUT_READS, "classes"), preprocessed.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_datasets(parts: Input[List[Dataset]], merged: Output[Dataset]):  # noqa: UP006
    """One stage's per-class dataset folders merged into one (defectgen.cluster.fanin.merge)."""
    from defectgen.cluster.fanin import merge

    merge([p.path for p in parts], merged.path)
