#!/usr/bin/env bash
# A fine-tuning milestone judged under the rule of configs/experiment/fine_fskd.yaml (and fine_fskd2.yaml), without
# a weight average: (1)-(5) scripts/judge_fine.sh with TTA=true RT=cache/rt40, (6) scripts/val_failure_modes.py --tta,
# (7) scripts/eval_locator.py on cache/accept_fs --tta --pipeline, and (2)'s shipped reference in judge_fine.sh's count
# (scripts/eval_locator.py on dev_c8 and dev_c9 --tta with models/). Development data only, never a held-out cohort.
#
#   scripts/judge_fskd.sh CKPT OUT_DIR        e.g.  outputs/train/fine_fskd2/run1/checkpoints/step1500.ckpt outputs/judge_fskd2
#
# Real development scans: $ONFH_REAL_DATA (scripts/judge_real.sh). About 16 minutes on the 2-core CPU machine.
set -euo pipefail
ck=${1:?milestone checkpoint}; out=${2:?out dir}
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python
[ -f cache/accept_fs/manifest.csv ] || { echo "error: cache/accept_fs missing (scripts/make_accept_like.sh)" >&2; exit 2; }
mkdir -p "$out"; name=$(basename "$ck" .ckpt); cp "$ck" "$out/$name.ckpt"
( TTA=true RT=cache/rt40 scripts/judge_fine.sh "$out/j" "$name=$out/$name.ckpt" > "$out/j.log" 2>&1
  "$py" scripts/eval_locator.py cache/accept_fs/manifest.csv --tta --pipeline --threads 1 \
    --model-dir "$out/j/export_$name" > "$out/accept_fs.txt" 2>&1 ) &
( "$py" scripts/val_failure_modes.py --tta models/fine.ckpt "$out/$name.ckpt" > "$out/fm.txt" 2>&1
  for c in dev_c8 dev_c9; do
    "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --model-dir models --threads 1 --tta > "$out/shipped_$c.txt" 2>&1
  done ) &
wait
echo "== $name"; grep -E "^\(|real_|dev_c|lesion\(2\+3\)|rc_lesion|ckpt" "$out/j.log" || true
echo "  (5) $(grep -m1 lesion_dice_median_hips "$out/j/rt_$name.log" || true)"
echo "  (7) accept_fs $(grep TOTAL "$out/accept_fs.txt" || true)"
echo "== (2) shipped: $(grep TOTAL "$out/shipped_dev_c8.txt") | $(grep TOTAL "$out/shipped_dev_c9.txt")"
echo "== (6)"; grep -E "^##|^healthy +T1 +n=" "$out/fm.txt" || true
