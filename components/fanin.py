from typing import List  # noqa: UP035 (kfp reads these annotations)

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def classes(params_yaml: str, preprocessed: Input[Dataset]) -> List[str]:  # noqa: UP006
    """The classes the pipeline fans out over (defectgen.cluster.fanin.classes)."""
    from defectgen.cluster.fanin import classes
    from defectgen.runner import params_from_yaml

    return classes(params_from_yaml(params_yaml, "classes component params"), preprocessed.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge_datasets(parts: Input[List[Dataset]], merged: Output[Dataset]):  # noqa: UP006
    """One stage's per-class dataset folders merged into one (defectgen.cluster.fanin.merge)."""
    from defectgen.cluster.fanin import merge

    merge([p.path for p in parts], merged.path)
