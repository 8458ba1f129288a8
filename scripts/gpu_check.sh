#!/usr/bin/env bash
# Issue 15 item 6 on a lent GPU machine: the last of the calls that scripts/gpu_pack.sh prints.
#     bash scripts/gpu_check.sh N_PIECES [gpu_check.py options]
# Joins the carried pieces of onnxruntime-gpu (earlier calls left them in /tmp/onfh_gpu), checks them against
# .gpu/ort.sha256, unpacks it and .gpu/pure.tgz into /tmp/site, and runs scripts/gpu_check.py with its results
# in $OUT (they come back). Also runs on a CPU-only machine once .gpu/ is there (the CUDA rows then say why not).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?number of pieces (scripts/gpu_pack.sh prints it)}; shift
mkdir -p /tmp/onfh_gpu /tmp/site
cp .gpu/ort/ort.tar.xz.* /tmp/onfh_gpu/
have=$(ls /tmp/onfh_gpu/ort.tar.xz.* | wc -l)
[ "$have" -eq "$n" ] || { echo "error: $have of $n onnxruntime-gpu pieces here; carry the missing ones first" >&2; exit 1; }
[ "$(cat /tmp/onfh_gpu/ort.tar.xz.* | sha256sum | cut -d' ' -f1)" = "$(cat .gpu/ort.sha256)" ] \
  || { echo "error: the joined pieces do not match .gpu/ort.sha256" >&2; exit 1; }
cat /tmp/onfh_gpu/ort.tar.xz.* | xz -d | tar -x -C /tmp/site
tar -xzf .gpu/pure.tgz -C /tmp/site
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/onfh_gpu/out}
python3 -m compileall -q src
python3 scripts/gpu_check.py --out "$out" --work /tmp/onfh_gpu/work "$@"   # only the report in $OUT
