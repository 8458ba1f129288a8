#!/usr/bin/env bash
# The three real development scans (CPTAC-UCEC C3N-00858, C3N-01763, C3N-01003, series 29) through the cascade of
# one or more model directories: side, head volume, lesion volume, head centre and flags of each hip.
#
#   scripts/judge_real.sh OUT_DIR NAME=MODEL_DIR [NAME=MODEL_DIR ...]       e.g.  outputs/judge shipped=models
#
# The scans are looked up in $ONFH_REAL_DATA or ../shared/data/real (skipped when absent). Used by
# scripts/judge_fine.sh and scripts/judge_coarse.sh; development data only, never a held-out scan.
# TTA (default false): onfh-infer's tta, false as the fine rules' shipped references were measured.
set -euo pipefail
out=${1:?out dir}; shift
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
real=${ONFH_REAL_DATA:-../shared/data/real}
mkdir -p "$out"
for arg in "$@"; do
  name=${arg%%=*}; dir=${arg#*=}
  for c in c3n00858 c3n01763 c3n01003; do
    d="$real/cptac_ucec_$c/image"; [ -d "$d" ] || { echo "  $c: not found under $real, skipped"; continue; }
    .venv/bin/onfh-infer input="$d" series=29 threads=2 tta="${TTA:-false}" model_dir="$dir" out_dir="$out/real_${name}_$c" \
      > "$out/real_${name}_$c.log" 2>&1 || true
  done
done
.venv/bin/python - "$out" <<'PY'
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
