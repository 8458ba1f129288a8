#!/usr/bin/env bash
# Two DEVELOPMENT cohorts rendering issue 22's real scan (style C with its protocol pinned, onfh-synth style_c.*):
# a 3D spoiled gradient echo near opposed phase (TR 3.85 ms, TE 1.42 ms, flip 10 or 20 degrees), 160 x 160 x 20
# voxels of 1.625 x 1.625 x 3.6 mm (field of view 260 mm), an oblique axial slab tilted 24 degrees about the left-right
# axis, healthy patients, months 0 and 3 (two poses):
#   cache/accept_like  the hips 14-22 mm off the field's centre (heads at its lateral edges), 10 patients, seed 9401
#   cache/accept_edge  30-42 mm off (one head partly beyond the edge), 6 patients, seed 9402
# They were looked at while changing the engine (a miss on accept_edge led to the second look past a doubted
# partner), so they are development data, not test sets. Then, e.g.:
#   .venv/bin/python scripts/eval_locator.py cache/accept_like/manifest.csv --tta --pipeline
# Usage: scripts/make_accept_like.sh   (an existing cohort is kept; FORCE=1 regenerates; about 2-3 min each)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PROTOCOL=('style_c.n_slices=[20,20]' 'style_c.slice_mm=[3.6,3.6]' 'style_c.fov_mm=[260,260]'
  'style_c.inplane_mm=[1.625,1.625]' 'style_c.tilt_deg=[24,24]' style_c.tilt_lr_fraction=1.0
  style_c.offcentre_fraction=1.0 'style_c.tr_ms=[3.85,3.85]' 'style_c.te_ms=[1.42,1.42]' 'style_c.flip_deg=[10,20]')

make_one() {  # name, patients, seed, lateral offset range
  local out=cache/$1
  if [[ -f $out/manifest.csv && -z ${FORCE:-} ]]; then
    echo "$out exists (FORCE=1 to regenerate)"; return
  fi
  rm -rf "$out.tmp"
  "$BIN/onfh-synth" out_dir="$out.tmp" n_patients="$2" seed="$3" style=c 'months=[0,3]' disease.healthy_fraction=1.0 \
    "${PROTOCOL[@]}" "style_c.offcentre_x_mm=$4"
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "wrote $out/manifest.csv"
}

make_one accept_like 10 9401 '[-22,-14]'
make_one accept_edge 6 9402 '[-42,-30]'
