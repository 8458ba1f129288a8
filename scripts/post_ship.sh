#!/usr/bin/env bash
# What is measured ONCE after a model is shipped (models/ as committed), never before:
#   held-out   onfh-eval on the four held-out cohorts (scripts/make_heldout.sh) and scripts/eval_locator.py on
#              cache/heldout_c (visible heads found)                                   -> outputs/eval_<TAG>/
#   real test  onfh-infer on each scan folder under $ONFH_REAL_TEST (series 29; skipped when unset)
#                                                                                      -> outputs/realtest_<TAG>/<scan>/
#   retest     onfh-infer + onfh-track on the development retest cohorts cache/rt40 and cache/f3, then
#              scripts/retest_rc.py (configs/track.yaml's repeatability limits)        -> outputs/<cohort>_{infer,track}_<TAG>/
# Each step prints its summary lines; the model card's "looked at" counts are the caller's to update (one look per
# shipped model). The demo and the README pictures are made again by hand once configs/track.yaml is updated:
#   rm -rf outputs/demo/track && make demo && .venv/bin/python scripts/report_pictures.py
#
#   ONFH_REAL_TEST=<folder of real test scans> scripts/post_ship.sh TAG          (about 25 minutes on 2 cores)
#   STEPS="heldout real" scripts/post_ship.sh TAG                                 (a subset)
set -euo pipefail
tag=${1:?tag, e.g. the hash of the new model_version}
steps=${STEPS:-heldout real retest}
cd "$(dirname "$0")/.."
bin=.venv/bin
for c in heldout_a heldout_b heldout_c instyle_dr rt40 f3; do
  [ -f "cache/$c/manifest.csv" ] || { echo "error: cache/$c missing (scripts/make_heldout.sh, make_dev_cohorts.sh)" >&2; exit 2; }
done
echo "post-ship of $(python3 -c 'import json; print(json.load(open("models/model.json"))["model_version"])') as $tag"
if [[ " $steps " == *" heldout "* ]]; then
  out=outputs/eval_$tag
  mkdir -p "$out"
  "$bin/onfh-eval" model_dir=models out_dir="$out/eval" workers=1 cohorts.in_style=cache/instyle_dr/manifest.csv \
    cohorts.out_of_style_a=cache/heldout_a/manifest.csv cohorts.out_of_style_b=cache/heldout_b/manifest.csv \
    cohorts.out_of_style_c=cache/heldout_c/manifest.csv > "$out/eval.log" 2>&1
  tail -n 40 "$out/eval.log"
  "$bin/python" scripts/eval_locator.py cache/heldout_c/manifest.csv --tta --pipeline > "$out/heldout_c_locator.txt" 2>&1
  grep -E "TOTAL|LESION" "$out/heldout_c_locator.txt" || tail -n 5 "$out/heldout_c_locator.txt"
fi
if [[ " $steps " == *" real "* && -n ${ONFH_REAL_TEST:-} ]]; then
  out=outputs/realtest_$tag
  mkdir -p "$out"
  for d in "$ONFH_REAL_TEST"/*/; do
    n=$(basename "$d")
    "$bin/onfh-infer" input="$d" out_dir="$out/$n" series=29 threads=1 > "$out/$n.log" 2>&1 || true
  done
  "$bin/python" - "$out" <<'PY'
import glob, json, sys
hips, over, flags, largest = 0, 0, [], 0.0
for m in sorted(glob.glob(f"{sys.argv[1]}/*/*_measurements.json")):
    r = json.load(open(m))
    for h in r["hips"]:
        hips += 1; largest = max(largest, h["lesion_volume_ml"]); over += h["lesion_volume_ml"] > 0.5
    if r.get("qc_flags"):
        flags.append((m.split("/")[-2], r["qc_flags"]))
print(f"real test: {len(glob.glob(sys.argv[1] + '/*/'))} scans, {hips} hips, {over} with a lesion > 0.5 mL "
      f"(largest {largest:.2f} mL); flags: {flags}")
PY
fi
if [[ " $steps " == *" retest "* ]]; then
  for c in rt40 f3; do
    "$bin/onfh-infer" input="cache/$c/manifest.csv" out_dir="outputs/${c}_infer_$tag" workers=1 > "outputs/${c}_infer_$tag.log" 2>&1
    "$bin/onfh-track" manifest="cache/$c/manifest.csv" infer_dir="outputs/${c}_infer_$tag" \
      out_dir="outputs/${c}_track_$tag" report=false workers=1 > "outputs/${c}_track_$tag.log" 2>&1
  done
  "$bin/python" scripts/retest_rc.py "outputs/rt40_track_$tag/longitudinal.csv" "outputs/f3_track_$tag/longitudinal.csv"
fi
