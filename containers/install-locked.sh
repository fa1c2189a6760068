#!/usr/bin/env bash
# Install defectgen from requirements.lock into the current Python environment.
#   containers/install-locked.sh cpu      the lock as it is (torch's CPU wheel)
#   containers/install-locked.sh cu128    the lock with torch/torchvision swapped for the
#                                         same versions' CUDA build from PyTorch's index
# Every other package is the lock's exact version, checked against its sha256 hashes.
# The CUDA torch (and the nvidia-* wheels it pulls) comes from PyTorch's index at the
# lock's version, unhashed: the lock holds the CPU build's hash only.
set -euo pipefail
target=${1:?usage: install-locked.sh cpu|cu128 [lock]}
lock=${2:-requirements.lock}
pip=(python -m pip install --no-cache-dir)

# The version a lock pins, without a local tag (2.13.0+cpu -> 2.13.0).
pinned() { sed -n "s/^$1==\([^ +]*\).*/\1/p" "$lock"; }

case "$target" in
  cpu)
    "${pip[@]}" --extra-index-url https://download.pytorch.org/whl/cpu --require-hashes -r "$lock"
    ;;
  cu*)
    # Entries start at column 0; drop torch's and torchvision's whole entries.
    no_torch=$(mktemp)
    awk '/^[A-Za-z0-9]/ { skip = ($1 ~ /^(torch|torchvision)==/) } !skip' "$lock" >"$no_torch"
    "${pip[@]}" --require-hashes --no-deps -r "$no_torch"
    "${pip[@]}" --index-url "https://download.pytorch.org/whl/$target" \
      "torch==$(pinned torch)" "torchvision==$(pinned torchvision)"
    rm -f "$no_torch"
    ;;
  *)
    echo "install-locked.sh: unknown target '$target' (use cpu or cu128)" >&2
    exit 2
    ;;
esac
"${pip[@]}" --no-deps --no-build-isolation .
