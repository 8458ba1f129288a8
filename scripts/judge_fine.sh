#!/usr/bin/env bash
# The measurements a fine-network shipping rule names (configs/experiment/fine_*.yaml), for one or more checkpoints.
#
#   scripts/judge_fine.sh OUT_DIR NAME=CKPT [NAME=CKPT ...]        e.g.  outputs/judge_long step4000=<run>/checkpoints/step4000.ckpt
#   NAME=shipped (no checkpoint) measures the shipped models/ as they are.
#
# For each checkpoint: exports it with the shipped coarse network (COARSE, default models/coarse.ckpt), then
# (1) the three real development scans (scripts/judge_real.sh): side, head centre, head and lesion volume, flags;
# (2) the style-C development cohorts cache/dev_c8 and cache/dev_c9 (scripts/eval_locator.py, head search on);
# (3) lesion Dice on the 64 fine_mix validation crops, (4) on the 64 fine_gre crops (scripts/val_dr.py, seed 2112);
# (5) the repeatability coefficient on the retest cohort RT (onfh-eval; default cache/rt, 11 pairs, as the rules up to
# fine_long2 name it; RT=cache/rt40, 47 pairs, for rules that name it: docs/benchmarks.md "Repeatability").
# Writes everything under OUT_DIR and prints a summary. Uses only development data, never a held-out cohort.
# TTA=false (default): no test-time mirroring in (1), (2) and (5), as the shipped references of the fine rules up to
# fine_scar3 were measured (onfh-infer's default was tta=false until 2026-12-04); TTA=true mirrors as onfh-infer now does.
set -euo pipefail
out=${1:?out dir}; shift
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python; bin=.venv/bin; coarse=${COARSE:-models/coarse.ckpt}; export TTA=${TTA:-false}; rt=${RT:-cache/rt}
mkdir -p "$out"
names=(); ckpts=()
for arg in "$@"; do
  name=${arg%%=*}; ck=${arg#*=}; names+=("$name")
  if [ "$name" = shipped ]; then continue; fi
  ckpts+=("$ck")
  echo "export $name <- $ck"
  "$bin/onfh-export" coarse_ckpt="$coarse" fine_ckpt="$ck" out_dir="$out/export_$name" > "$out/export_$name.log" 2>&1
done
model_dir() { if [ "$1" = shipped ]; then echo models; else echo "$out/export_$1"; fi; }

echo "(1) real development scans"
pairs=(); for n in "${names[@]}"; do pairs+=("$n=$(model_dir "$n")"); done
scripts/judge_real.sh "$out" "${pairs[@]}"

echo "(2) style-C development cohorts"
for n in "${names[@]}"; do
  for c in dev_c8 dev_c9; do
    [ -f "cache/$c/manifest.csv" ] || { echo "  cache/$c missing, skipped"; continue; }
    "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --model-dir "$(model_dir "$n")" --threads 2 $([ "$TTA" = true ] && echo --tta) > "$out/loc_${n}_$c.txt" 2>&1
    echo "  $n $c: $(grep TOTAL "$out/loc_${n}_$c.txt")"
  done
done

echo "(3), (4) validation crops (first row: the shipped network)"
cache=cache/dr/fine_1.1mm_112/seed2112_shapes
"$py" scripts/val_dr.py --cache "$cache" --seed 2112 --samples 64 \
  --acq realistic=0.35,gre=0.3,post_contrast=0.1,slab=0.2 models/fine.ckpt "${ckpts[@]}" > "$out/val_mix.txt" 2>&1
"$py" scripts/val_dr.py --cache "$cache" --seed 2112 --samples 64 \
  --acq gre=0.35,post_contrast=0.1,slab=0.2 models/fine.ckpt "${ckpts[@]}" > "$out/val_gre.txt" 2>&1
grep -H ckpt "$out/val_mix.txt" "$out/val_gre.txt" || true

echo "(5) retest cohort"
for n in "${names[@]}"; do
  "$bin/onfh-eval" cohort="$rt/manifest.csv" model_dir="$(model_dir "$n")" out_dir="$out/rt_$n" workers=2 tta="$TTA" \
    > "$out/rt_$n.log" 2>&1 || true
  echo "  $n: $(grep -m1 "rc_lesion_volume_ml " "$out/rt_$n.log" || echo "no RC: see $out/rt_$n.log")" \
    "95% CI $(grep -m1 "rc_lesion_volume_ml_lo95" "$out/rt_$n.log" | awk '{print $2}')-$(grep -m1 \
    "rc_lesion_volume_ml_hi95" "$out/rt_$n.log" | awk '{print $2}')"
done
