"""Running on a cluster: the KFP fan-in helpers (fanin), recurring runs (recurring) and
whether this process is a task of the compiled pipeline."""

from __future__ import annotations

import os

CLUSTER_ENV = "DEFECTGEN_CLUSTER"  # set on every task of the compiled KFP pipeline


def in_cluster() -> bool:
    """Whether this process is a task of the compiled pipeline (a pod, or kfp.local)."""
    return os.environ.get(CLUSTER_ENV) == "1"
