#!/usr/bin/env bash
# The fine_fskd* rules' cheap measurements first, before scripts/judge_milestone.sh (whose header estimates 16 minutes
# a candidate plus 10 for SLAB=1, and the retest cohorts): the rules' (7) and (6), and the thin-slab hip that decided
# (9) on 2026-12-06. The shipped model's took 8m53s on the 2-core machine with a training run beside it (2026-12-07).
#
#   scripts/prescreen_fine.sh CKPT OUT_DIR       a fine checkpoint, exported with the shipped coarse network
#   scripts/prescreen_fine.sh shipped OUT_DIR    the shipped model (models/), the reference
#
#   (7) accept_fs: scripts/eval_locator.py cache/accept_fs/manifest.csv --tta --pipeline (line TOTAL: heads found,
#       false heads, healthy hips with a false lesion over 0.5 mL); made by scripts/make_accept_like.sh
#   (6) healthy T1 validation crops: scripts/val_failure_modes.py --tta (line "healthy T1 n=8": false lesions over
#       0.5 mL, the largest)
#   thin-slab hip: onfh-infer on cache/slab_edge2 P001_m03 (the left hip's lesion; the shipped network 0.05 mL)
# Development data only, never a held-out cohort. Prints the three lines; the files stay in OUT_DIR.
set -euo pipefail
ck=${1:?fine checkpoint or "shipped"}; out=${2:?out dir}
cd "$(dirname "$0")/.."
py=.venv/bin/python; bin=.venv/bin
[ -f cache/accept_fs/manifest.csv ] && [ -f cache/slab_edge2/manifest.csv ] || {
  echo "error: cache/accept_fs or cache/slab_edge2 missing (scripts/make_accept_like.sh)" >&2; exit 2; }
mkdir -p "$out"
if [ "$ck" = shipped ]; then
  model=models; ck=models/fine.ckpt
else
  model=$out/export
  "$bin/onfh-export" coarse_ckpt=models/coarse.ckpt fine_ckpt="$ck" out_dir="$model" > "$out/export.log" 2>&1
fi
"$py" scripts/eval_locator.py cache/accept_fs/manifest.csv --tta --pipeline --threads 1 --model-dir "$model" \
  > "$out/accept_fs.txt" 2>&1
"$py" scripts/val_failure_modes.py --tta "$ck" > "$out/fm.txt" 2>&1
rm -rf "$out/slab_hip"
"$bin/onfh-infer" input=cache/slab_edge2/images/P001_m03.nii.gz model_dir="$model" tta=true threads=1 \
  out_dir="$out/slab_hip" > "$out/slab_hip.log" 2>&1
echo "(7) accept_fs $(grep TOTAL "$out/accept_fs.txt")"
echo "(6) $(grep -E "^healthy +T1 +n=" "$out/fm.txt")"
echo "thin-slab hip slab_edge2 P001_m03 left, lesion mL: $("$py" -c '
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("side") == "left"]
print(", ".join(r["lesion_volume_ml"] for r in rows) or "no left hip")' "$out/slab_hip/measurements.csv")"
