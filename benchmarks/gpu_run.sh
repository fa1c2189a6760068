# The GPU run: everything a lent H100/H200 should measure, in ONE device call that stops
# itself at a deadline and writes each result the moment it has it.
#
#   benchmarks/gpu_run.sh [--plan] [--budget SECONDS] [--dag-only] [--smoke] [OUT]
#
# --plan prints the plan (benchmarks/gpu_plan.py: setup, the A/B rows under hard limits,
# the NEU-DET DAG through report, estimated from the last card run) and exits; it exits 1
# if the plan does not fit one call. The allowances come from gpu_plan.py.
# OUT: the results folder (default $OUT when set, else benchmarks/work/gpu_run). In it:
#   env.txt                        the machine: nvidia-smi, Python, torch and library versions
#   gpu_diffusion-<device>.json|md SD1.5-architecture A/B rows (benchmarks/gpu_diffusion.py):
#                                  TI/LoRA steps (per-step copies, sync-free, compiled),
#                                  img2img with the LoRA unfused, fused, q/k/v fused, compiled
#   gpu_pipeline-<device>.json|md  the whole DAG on NEU-DET, GPU profile (gpu_pipeline.py)
#   gpu_pipeline-<device>-samples.png   generated images per class
#   log.txt                        everything printed
# At most 8 files: what the device tool brings back.
#
# Before it, on a machine with PyPI: benchmarks/gpu_prepare.sh (the .whl wheels from
# requirements.lock and NEU-DET at 128 px in .gpudata); carry both. On the GPU machine
# the wheels install into /tmp/defectgen-site, ahead of the machine's own packages, once:
# a warm machine that has them skips the install. --smoke runs the same path on the CPU
# at toy size without the compile rows (make test runs it). --dag-only skips the rows.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
smoke=0 dag_only=0 plan=0 out="" budget=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift ;;
    --budget=*) budget=${1#*=} ;;
    --smoke) smoke=1 ;;
    --dag-only) dag_only=1 ;;
    --plan) plan=1 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "gpu_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
py=${PYTHON:-python3}
[ "$plan" = 1 ] && exec "$py" "$repo/benchmarks/gpu_plan.py"
eval "$("$py" "$repo/benchmarks/gpu_plan.py" --shell)"  # SETUP_S ROWS_S ROW_LIMIT_S DAG_S
budget=${budget:-$((SETUP_S + ROWS_S + DAG_S))}
out=${out:-${OUT:-$repo/benchmarks/work/gpu_run}}
start=$(date +%s)
deadline=$((start + budget))
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
work=${WORK:-/tmp/defectgen-gpu-run}
mode=()
[ "$smoke" = 1 ] && mode=(--smoke)
left() { echo $((deadline - $(date +%s))); }

# 1. Install the carried wheels (no network there), unless this machine already has
#    exactly this set; our sources come first on the path.
site=/tmp/defectgen-site
if [ "$smoke" = 0 ] && compgen -G "$repo/.whl/*.whl" >/dev/null; then
  wanted=$(cd "$repo/.whl" && ls ./*.whl | sha256sum | cut -c1-16)
  if [ "$(cat "$site/.wheels" 2>/dev/null)" = "$wanted" ]; then
    echo "gpu_run: wheels already installed in $site"
  else
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$repo"/.whl/*.whl || { echo "wheel install failed"; exit 1; }
    echo "$wanted" >"$site/.wheels"
  fi
  export PYTHONPATH=$site
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1

# 2. The machine.
{
  date -u
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$py" - <<'PY'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
import defectgen._torchvision_compat as c; print("torchvision import:", c.ensure_torchvision_importable())
for name in ("torch", "torchvision", "diffusers", "transformers", "peft", "tokenizers", "accelerate",
             "torch_fidelity", "open_clip", "pydantic", "numpy", "pandas", "pyarrow", "sklearn"):
    try:
        m = importlib.import_module(name); print(name, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING:", type(exc).__name__, exc)
import torch; print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
PY
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# 3. The data: NEU-DET class folders (prepared by gpu_prepare.sh, or made here).
data=$repo/.gpudata/neu-det-128
if [ "$smoke" = 1 ] || [ ! -d "$data" ]; then
  data=$work/neu-det
  size=128 classes=None per_class=None
  [ "$smoke" = 1 ] && size=32 classes="['crazing', 'scratches']" per_class=16
  PYTHONPATH="$repo/benchmarks:$PYTHONPATH" "$py" -c "
from pathlib import Path; import gpu_data
print(gpu_data.prepare_neu(Path('$repo/../shared/data/neu-det'), Path('$data'), size=$size,
                           classes=$classes, per_class=$per_class), 'NEU-DET images in $data')" ||
    { echo "no NEU-DET: run benchmarks/gpu_prepare.sh and carry .gpudata"; exit 1; }
fi

# 4. The A/B rows, each under its hard limit, all within ROWS_S (less on a short budget).
bench=0
if [ "$dag_only" = 0 ]; then
  rows=$ROWS_S
  [ "$rows" -gt $(($(left) / 2)) ] && rows=$(($(left) / 2))
  compile=()
  [ "$smoke" = 1 ] && compile=(--no-compile)  # a CPU compile of even the toy UNet takes minutes
  "$py" "$repo/benchmarks/gpu_diffusion.py" "${mode[@]}" "${compile[@]}" --out "$out" \
    --repeats 1 --row-timeout "$ROW_LIMIT_S" --deadline $(($(date +%s) + rows))
  bench=$?
fi

# 5. The whole DAG on NEU-DET in what is left.
"$py" "$repo/benchmarks/gpu_pipeline.py" "${mode[@]}" --data "$data" --out "$out" \
  --work "$work/dag" --deadline "$deadline"
dag=$?
echo "gpu_run: benchmark rows exit $bench, DAG exit $dag, $(( $(date +%s) - start )) s of $budget"
[ "$bench" = 0 ] && [ "$dag" = 0 ]
