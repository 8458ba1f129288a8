#!/usr/bin/env bash
# Issue 23 item 1: prepare, here (pip can download here, not there), what scripts/gpu_train.sh needs on a lent
# GPU machine (python3 3.12 with torch 2.11, Lightning, numpy, scipy, tqdm, rich, typer, einops, jaxtyping,
# humanize, wrapt, PyYAML; no MONAI, TorchIO, SimpleITK, nibabel, Hydra, OmegaConf, antlr4, Deprecated).
# Writes .gpu_train/ (ignored through .gitignore):
#   pieces/train.tar.xz.NN  one xz archive, in pieces that each fit one device call beside the working tree:
#                           site/  the missing packages (manylinux x86_64 wheels for CPython 3.12, unpacked;
#                                  antlr4 4.9.3 has no wheel: copied from the venv), the versions of the venv
#                           dr/    the pre-rendered tissue crops (DR_SETS under CACHE_DR)
#                           resume.ckpt  only with RESUME_CKPT=<checkpoint>: the run to resume
#   train.tar.xz.sha256     the checksum of the whole archive.
# Then prints the device calls to make back to back (the machine stays warm 30 s after a call; what the
# earlier calls leave in /tmp/onfh_train is gone once it goes back).
#     scripts/gpu_train_pack.sh                          # PY=.venv/bin/python CACHE_DR=cache/dr
#     RESUME_CKPT=outputs/train/fine_mottle3/gpu-1/checkpoints/last.ckpt scripts/gpu_train_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE_DR=${CACHE_DR:-cache/dr}
DR_SETS=${DR_SETS:-fine_1.1mm_112/seed2111_shapes fine_1.1mm_112/seed2112_shapes}
PACKAGES="monai torchio simpleitk nibabel hydra-core omegaconf deprecated"
git check-ignore -q .gpu_train/x || { echo "error: .gpu_train/ is not ignored (.gitignore)" >&2; exit 1; }
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for set in $DR_SETS; do
  [ -n "$(ls "$CACHE_DR/$set" 2>/dev/null | head -1)" ] || { echo "error: no tissue crops in $CACHE_DR/$set" >&2; exit 1; }
done
rm -rf .gpu_train && mkdir -p .gpu_train/dl .gpu_train/stage/site .gpu_train/stage/dr .gpu_train/pieces
pins=()
for p in $PACKAGES; do pins+=("$p==$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu_train/dl "${pins[@]}"
for w in .gpu_train/dl/*.whl; do unzip -q -o "$w" -d .gpu_train/stage/site; done
cp -r "$SITE"/antlr4 "$SITE"/antlr4_python3_runtime-*.dist-info .gpu_train/stage/site/
rm -rf .gpu_train/stage/site/nibabel/tests  # nibabel's own tests (a third of it), never imported
find .gpu_train/stage/site -name __pycache__ -prune -exec rm -rf {} +
for set in $DR_SETS; do
  mkdir -p ".gpu_train/stage/dr/$(dirname "$set")"
  ln -s "$(cd "$CACHE_DR/$set" && pwd)" ".gpu_train/stage/dr/$set"
done
members=(site dr)
if [ -n "${RESUME_CKPT:-}" ]; then cp "$RESUME_CKPT" .gpu_train/stage/resume.ckpt; members+=(resume.ckpt); fi
# what travels anyway: tracked and untracked-not-ignored files
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
piece_mib=$(( (64 * 1048576 - tree_bytes) / 1048576 - 2 ))
[ "$piece_mib" -ge 8 ] || { echo "error: the working tree leaves only ${piece_mib} MiB per call" >&2; exit 1; }
echo "compressing (5-10 minutes on 2 busy cores); pieces of ${piece_mib} MiB" >&2
tar -C .gpu_train/stage -chf - "${members[@]}" | xz -T0 -9 > .gpu_train/train.tar.xz
python3 scripts/gpu_train.py split .gpu_train/train.tar.xz .gpu_train/pieces --piece-mib "$piece_mib" >&2
mv .gpu_train/pieces/train.tar.xz.sha256 .gpu_train/
rm -rf .gpu_train/dl .gpu_train/stage .gpu_train/train.tar.xz
pieces=(.gpu_train/pieces/train.tar.xz.*)
n=${#pieces[@]}
echo "Device calls, back to back (run, each with its carry):"
for ((i = 0; i < n - 1; i++)); do
  echo "  carry [\"${pieces[$i]}\"]  command: mkdir -p /tmp/onfh_train/pieces && cp ${pieces[$i]} /tmp/onfh_train/pieces/ && ls -l /tmp/onfh_train/pieces  (timeout_s 60)"
done
echo "  carry [\"${pieces[$((n - 1))]}\", \".gpu_train/train.tar.xz.sha256\"]  command: bash scripts/gpu_train.sh --exp fine_mottle3  (timeout_s 600)"
echo "Then, here: scripts/gpu_train_unpack.sh <files_at of that call> outputs/train/fine_mottle3/gpu-<n>"
