#!/usr/bin/env bash
# Issue 23 item 1, here: the run folder that scripts/gpu_train.sh sent back (result.tar.NN + result.tar.sha256
# in the call's files folder), joined, checked against its checksum and unpacked into DEST
# (checkpoints/last.ckpt with the optimizer state, best.ckpt, logs/, result.json, gpu_train.json).
#     scripts/gpu_train_unpack.sh FILES_FOLDER DEST
#     onfh-train experiment=fine_mottle3 ckpt_path=DEST/checkpoints/last.ckpt trainer.max_steps=<more>   # resume
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 FILES_FOLDER DEST" >&2; exit 2; }
python3 scripts/gpu_train.py unpack "$1" "$2"
