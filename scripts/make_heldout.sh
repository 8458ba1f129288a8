#!/usr/bin/env bash
# Generate the two held-out OUT-OF-STYLE test cohorts of issue 12 (fixed seeds, never used for training or
# model selection; evaluate each shipped model on them once, with onfh-eval):
#   cache/heldout_a  today's onfh-synth renderer (phantom + acquisition), held out whole
#   cache/heldout_b  the independently written style-B renderer (onfh_seg.synth.style_b)
#   cache/heldout_c  the thin-slab 3D gradient-echo renderer (onfh_seg.synth.style_c)
#   cache/instyle_dr the training style (random contrast per scan), for the in-style column
# 8 patients x 3 timepoints each (months 0, 3, 12): every 4th patient bilateral, the others unilateral,
# so diseased and healthy hips mix. An existing cohort is kept (FORCE=1 regenerates it). Each cohort is
# written to a temporary folder and renamed when complete.
# Usage: scripts/make_heldout.sh [WORKERS]   (default 2). Measured with 2 workers on the 2-core machine while
# a training run also used it: 339 s (A), 530 s (B); 97 MB and 137 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORKERS=${1:-2}
N=${N_PATIENTS:-8}

make_one() {  # name, then onfh-synth overrides
  local name=$1; shift
  local out=cache/$name
  if [[ -f $out/manifest.csv && -z ${FORCE:-} ]]; then
    echo "$out exists (FORCE=1 to regenerate)"; return
  fi
  rm -rf "$out.tmp"
  "$BIN/onfh-synth" out_dir="$out.tmp" n_patients="$N" months=[0,3,12] workers="$WORKERS" "$@"  # later months=... wins
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "wrote $out/manifest.csv"
}

make_one heldout_a seed=9101 style=a \
  'acquisition.orientations={axial: 0.4, coronal: 0.3, sagittal: 0.3}' acquisition.small_fov_fraction=0.2
make_one heldout_b seed=9102 style=b
# the thin-slab 3D gradient-echo renderer (onfh_seg.synth.style_c), 6 patients x 3 visits
N=${N_PATIENTS_C:-6} make_one heldout_c seed=9300 style=c
# in-style: the training renderer (random contrast per scan), 6 patients x months 0, 12
N=6 make_one instyle_dr seed=2103 style=dr months=[0,12]

cat <<'MSG'
Held-out test cohorts ready. Evaluate a shipped model once (and say so in the model card):
  onfh-eval out_dir=outputs/eval_heldout cohorts.in_style=[<validation manifests of the training styles>] \
            cohorts.out_of_style_a=cache/heldout_a/manifest.csv cohorts.out_of_style_b=cache/heldout_b/manifest.csv \
            cohorts.out_of_style_c=cache/heldout_c/manifest.csv
MSG
