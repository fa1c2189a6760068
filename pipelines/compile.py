"""Compile the pipeline: `python -m pipelines.compile [--params params.yaml] [--out FILE]`.

The params are compiled in: each task's `params` input holds the keys its stage reads
(pipelines.defectgen_pipeline), so a run uses the params it was compiled from and KFP's
cache follows each stage's keys. Recompile when params.yaml changes (a new pipeline
version): tests/cluster/test_compiled_pipeline.py fails when the committed YAML is stale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kfp import compiler

from defectgen.config import load_params
from pipelines.defectgen_pipeline import build

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pipelines" / "build" / "defectgen.yaml"


def compile_pipeline(params_path: Path, out: Path) -> Path:
    params = load_params(params_path)  # refuse to embed invalid params
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(params), package_path=str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(f"compiled -> {compile_pipeline(args.params, args.out)}")


if __name__ == "__main__":
    main()
