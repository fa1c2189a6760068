"""Compile the pipeline: `python -m pipelines.compile [--params params.yaml] [--out FILE]`.

The repo's params.yaml becomes the default of the `params_yaml` pipeline
parameter, as one line of JSON (JSON is YAML; kfp copies defaults into a comment
header that breaks on multi-line strings). Recompile when params.yaml changes:
tests/cluster/test_compiled_pipeline.py fails when the committed YAML is stale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from kfp import compiler

from defectgen.config import load_params
from pipelines.defectgen_pipeline import build

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pipelines" / "build" / "defectgen.yaml"


def compile_pipeline(params_path: Path, out: Path) -> Path:
    params = load_params(params_path)  # refuse to embed invalid params
    as_json = json.dumps(yaml.safe_load(params_path.read_text(encoding="utf-8")))
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build(params.cluster),
        package_path=str(out),
        pipeline_parameters={"params_yaml": as_json},
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(f"compiled -> {compile_pipeline(args.params, args.out)}")


if __name__ == "__main__":
    main()
