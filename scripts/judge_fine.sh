#!/usr/bin/env bash
# The measurements a fine-network shipping rule names (configs/experiment/fine_*.yaml), for one or more checkpoints.
#
#   scripts/judge_fine.sh OUT_DIR NAME=CKPT [NAME=CKPT ...]        e.g.  outputs/judge_long step4000=<run>/checkpoints/step4000.ckpt
#   NAME=shipped (no checkpoint) measures the shipped models/ as they are.
#
# For each checkpoint: exports it with the shipped coarse network (COARSE, default models/coarse.ckpt), then
# (1) the three real development scans (CPTAC-UCEC, series 29; looked up in $ONFH_REAL_DATA or ../shared/data/real;
#     skipped when absent): side, head centre, head and lesion volume and flags of each hip;
# (2) the style-C development cohorts cache/dev_c8 and cache/dev_c9 (scripts/eval_locator.py, head search on);
# (3) lesion Dice on the 64 fine_mix validation crops, (4) on the 64 fine_gre crops (scripts/val_dr.py, seed 2112);
# (5) the repeatability coefficient on the retest cohort cache/rt (onfh-eval).
# Writes everything under OUT_DIR and prints a summary. Uses only development data, never a held-out cohort.
set -euo pipefail
out=${1:?out dir}; shift
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python; bin=.venv/bin; coarse=${COARSE:-models/coarse.ckpt}
real=${ONFH_REAL_DATA:-../shared/data/real}
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
for n in "${names[@]}"; do
  for c in c3n00858 c3n01763 c3n01003; do
    d="$real/cptac_ucec_$c/image"; [ -d "$d" ] || { echo "  $c: not found under $real, skipped"; continue; }
    "$bin/onfh-infer" input="$d" series=29 threads=2 model_dir="$(model_dir "$n")" out_dir="$out/real_${n}_$c" \
      > "$out/real_${n}_$c.log" 2>&1 || true
  done
done
"$py" - "$out" <<'PY'
import glob, json, sys
for d in sorted(glob.glob(f"{sys.argv[1]}/real_*_c3n*/")):
    m = glob.glob(d + "*_measurements.json")
    if not m:
        print(" ", d.split("/")[-2], "no output"); continue
    r = json.load(open(m[0]))
    hips = [(h["side"], round(h["head_volume_ml"], 1), round(h["lesion_volume_ml"], 2),
             [round(v) for v in h["head_centre_ras_mm"]], h.get("flags")) for h in r["hips"]]
    over = sum(h["lesion_volume_ml"] > 0.5 for h in r["hips"])
    print(" ", d.split("/")[-2], r.get("qc_flags"), f"over 0.5 mL: {over}", hips)
PY

echo "(2) style-C development cohorts"
for n in "${names[@]}"; do
  for c in dev_c8 dev_c9; do
    [ -f "cache/$c/manifest.csv" ] || { echo "  cache/$c missing, skipped"; continue; }
    "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --model-dir "$(model_dir "$n")" --threads 2 > "$out/loc_${n}_$c.txt" 2>&1
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
  "$bin/onfh-eval" cohort=cache/rt/manifest.csv model_dir="$(model_dir "$n")" out_dir="$out/rt_$n" workers=2 \
    > "$out/rt_$n.log" 2>&1 || true
  echo "  $n: $(grep -m1 "rc_lesion_volume_ml " "$out/rt_$n.log" || echo "no RC: see $out/rt_$n.log")"
done
