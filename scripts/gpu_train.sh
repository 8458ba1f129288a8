#!/usr/bin/env bash
# Issue 23 item 1 on a lent GPU machine: the last of the calls that scripts/gpu_train_pack.sh prints.
#     bash scripts/gpu_train.sh [gpu_train.py run options, e.g. --exp fine_mottle3 --budget-s 510] [-- key=value ...]
# Joins the carried pieces of .gpu_train/ (earlier calls left them in /tmp/onfh_train/pieces), checks them
# against .gpu_train/train.tar.xz.sha256, unpacks the packages and the tissue crops into /tmp/onfh_train, and
# runs scripts/gpu_train.py run: a probe (steps/s, GPU utilisation), training until the budget after this
# script started, the run folder in pieces in $OUT (they come back). Also runs on a CPU-only machine with
# --trainer cpu (the way it was tried here; see docs/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
W=${ONFH_TRAIN_WORK:-/tmp/onfh_train}
mkdir -p "$W/pieces"
cp .gpu_train/pieces/train.tar.xz.* "$W/pieces/"
python3 scripts/gpu_train.py join "$W/pieces" train.tar.xz "$W/train.tar.xz" --sha-folder .gpu_train
rm -rf "$W/site" "$W/dr" "$W/resume.ckpt"
xz -d -T0 < "$W/train.tar.xz" | tar -x -C "$W"
rm -f "$W/train.tar.xz"
export PYTHONPATH="$W/site:$PWD/src" PYTHONUNBUFFERED=1
python3 -c 'import sys, torch, monai, torchio, SimpleITK, nibabel, hydra, pytorch_lightning as pl
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.cuda.is_available()} lightning {pl.__version__}"
      f" monai {monai.__version__} torchio {torchio.__version__} SimpleITK {SimpleITK.Version_VersionString()}")'
resume=()
if [ -f "$W/resume.ckpt" ]; then resume=(--ckpt-path "$W/resume.ckpt"); fi
echo "ready $(( $(date +%s) - t0 )) s after start"
exec python3 scripts/gpu_train.py run --out "${OUT:-$W/out}" --work "$W" --t0 "$t0" "${resume[@]}" "$@"
