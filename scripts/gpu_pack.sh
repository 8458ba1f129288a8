#!/usr/bin/env bash
# Issue 15 item 6: prepare, here (pip can download here, not there), what scripts/gpu_check.sh needs on a lent
# GPU machine. Writes .gpu/ (ignored through .git/info/exclude):
#   ort/ort.tar.xz.NN  onnxruntime-gpu's onnxruntime package and dist-info (no TensorRT provider, no tools),
#                      xz-compressed, in pieces that each fit one device call beside the working tree (64 MiB);
#   ort.sha256         the checksum of the whole .tar.xz;
#   pure.tgz           nibabel, hydra, omegaconf and antlr4 from .venv (pure Python; the device image lacks them).
# Then prints the device calls to make back to back (the machine stays warm 30 s after a call).
#     scripts/gpu_pack.sh            # ORT_GPU_VERSION=1.31.1 (the container's pin)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${ORT_GPU_VERSION:-1.31.1}
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qsxF '/.gpu/' "$EXCLUDE" || echo '/.gpu/' >> "$EXCLUDE"
rm -rf .gpu && mkdir -p .gpu/dl .gpu/ort .gpu/unpacked
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/dl "onnxruntime-gpu==$VERSION"
unzip -q .gpu/dl/onnxruntime_gpu-*.whl -d .gpu/unpacked -x 'onnxruntime/capi/libonnxruntime_providers_tensorrt.so' \
  'onnxruntime/tools/*' 'onnxruntime/transformers/*' 'onnxruntime/quantization/*'
# what travels anyway: tracked and untracked-not-ignored files
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
tar -C "$SITE" --exclude=__pycache__ -czf .gpu/pure.tgz nibabel hydra omegaconf antlr4
piece_mib=$(( (64 * 1048576 - tree_bytes - $(stat -c %s .gpu/pure.tgz)) / 1048576 - 2 ))
[ "$piece_mib" -ge 8 ] || { echo "error: the working tree leaves only ${piece_mib} MiB per call" >&2; exit 1; }
echo "compressing (a few minutes on 2 cores); pieces of ${piece_mib} MiB" >&2
tar -C .gpu/unpacked -cf - . | xz -T0 -6 > .gpu/ort.tar.xz
sha256sum .gpu/ort.tar.xz | cut -d' ' -f1 > .gpu/ort.sha256
split -b "${piece_mib}M" -d -a 2 .gpu/ort.tar.xz .gpu/ort/ort.tar.xz.
rm -rf .gpu/dl .gpu/unpacked .gpu/ort.tar.xz
pieces=(.gpu/ort/ort.tar.xz.*)
n=${#pieces[@]}
echo "Device calls, back to back (run, each with its carry):"
for ((i = 0; i < n - 1; i++)); do
  echo "  carry [\"${pieces[$i]}\"]  command: mkdir -p /tmp/onfh_gpu && cp ${pieces[$i]} /tmp/onfh_gpu/ && ls -l /tmp/onfh_gpu"
done
echo "  carry [\"${pieces[$((n - 1))]}\", \".gpu/pure.tgz\", \".gpu/ort.sha256\"]  command: bash scripts/gpu_check.sh $n  (timeout_s 480)"
