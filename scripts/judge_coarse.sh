#!/usr/bin/env bash
# The measurements a coarse-network shipping rule names (configs/experiment/coarse_*.yaml), for one or more checkpoints.
#
#   scripts/judge_coarse.sh OUT_DIR NAME=CKPT [NAME=CKPT ...]      e.g.  outputs/judge_coarse step5600=<run>/checkpoints/step5600.ckpt
#   NAME=shipped (no checkpoint) measures the shipped coarse network with the same fine network.
#
# Each checkpoint is exported with the fine network FINE (default models/fine.ckpt, the shipped one), then
# (1) femoral-head Dice on the coarse_slab validation crops and (2) on the coarse_dr crops (scripts/val_dr.py, seed 2202);
# (3) heads found on the style-C development cohorts cache/dev_c8 + dev_c9 (scripts/eval_locator.py, head search on)
#     and on the three real development scans (scripts/judge_real.sh).
# COHORTS (default "dev_c8 dev_c9"): the cohorts of (3); LOC: extra scripts/eval_locator.py flags (e.g. "--tta
# --pipeline"); TTA: onfh-infer's tta for the real scans (scripts/judge_real.sh); REF_LOC: a folder of eval_locator.py
# outputs (<cohort>.txt) of the shipped cascade with this engine, used for NAME=shipped's (3) instead of running it again.
# Uses only development data, never a held-out cohort.
set -euo pipefail
out=${1:?out dir}; shift
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python; bin=.venv/bin; fine=${FINE:-models/fine.ckpt}
mkdir -p "$out"
names=(); ckpts=()
for arg in "$@"; do
  name=${arg%%=*}; ck=${arg#*=}; names+=("$name")
  [ "$name" = shipped ] && ck=models/coarse.ckpt
  ckpts+=("$ck")
  echo "export $name <- $ck (fine: $fine)"
  "$bin/onfh-export" coarse_ckpt="$ck" fine_ckpt="$fine" out_dir="$out/export_$name" > "$out/export_$name.log" 2>&1
done

echo "(1), (2) validation crops, femoral-head Dice"
cache=cache/dr/coarse_2mm_0/seed2202
"$py" scripts/val_dr.py --cache "$cache" --seed 2202 --patch 64 --pool 2 --spacing 4 --samples 48 --fg 0.5 \
  --acq gre=0.35,post_contrast=0.15,slab=0.5 "${ckpts[@]}" > "$out/val_slab.txt" 2>&1
"$py" scripts/val_dr.py --cache "$cache" --seed 2202 --patch 64 --pool 2 "${ckpts[@]}" > "$out/val_dr.txt" 2>&1
grep -H ckpt "$out/val_slab.txt" "$out/val_dr.txt" || true

echo "(3) heads found"
for n in "${names[@]}"; do
  for c in ${COHORTS:-dev_c8 dev_c9}; do
    [ -f "cache/$c/manifest.csv" ] || { echo "  cache/$c missing, skipped"; continue; }
    if [ "$n" = shipped ] && [ -n "${REF_LOC:-}" ]; then
      cp "$REF_LOC/$c.txt" "$out/loc_${n}_$c.txt"
    else
      # shellcheck disable=SC2086  # LOC holds several flags
      "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --model-dir "$out/export_$n" --threads 2 ${LOC:-} \
        > "$out/loc_${n}_$c.txt" 2>&1
    fi
    echo "  $n $c: $(grep TOTAL "$out/loc_${n}_$c.txt")"
  done
done
pairs=(); for n in "${names[@]}"; do pairs+=("$n=$out/export_$n"); done
scripts/judge_real.sh "$out" "${pairs[@]}"
