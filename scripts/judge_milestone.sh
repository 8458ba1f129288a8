#!/usr/bin/env bash
# A fine-tuning milestone and its weight average with the shipped fine network (WiSE-FT, alpha 0.5), judged side by
# side with every measurement the rules of configs/experiment/fine_fsplain2.yaml and fine_fsplain3.yaml name:
#
#   scripts/judge_milestone.sh CKPT OUT_DIR [PAUSE]      e.g.  outputs/train/fine_fsplain3/run1/checkpoints/step1500.ckpt
#                                                              outputs/judge_fsplain3 "onfh-train experiment=fine_fsplain3"
#
# Per candidate: scripts/judge_fine.sh with TTA=true RT=cache/rt40 (rules (1)-(5)) and scripts/eval_locator.py on
# cache/accept_fs (--tta --pipeline, rule (7); made by scripts/make_accept_like.sh); once for the shipped network and
# both candidates: scripts/val_failure_modes.py --tta (rule (6)). PAUSE: a training run's command line (pkill -f) that
# is stopped while judging and continued after, also on error. Development data only, never a held-out cohort.
set -euo pipefail
ck=${1:?milestone checkpoint}; out=${2:?out dir}; pause=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python
[ -f cache/accept_fs/manifest.csv ] || { echo "error: cache/accept_fs missing (scripts/make_accept_like.sh)" >&2; exit 2; }
mkdir -p "$out"
name=$(basename "$ck" .ckpt)
cp "$ck" "$out/$name.ckpt"
"$py" scripts/average_ckpts.py "$out/wise_$name.ckpt" models/fine.ckpt "$out/$name.ckpt"
if [ -n "$pause" ]; then
  pkill -STOP -f "$pause" || true
  trap 'pkill -CONT -f "$pause" || true' EXIT
fi
for n in "$name" "wise_$name"; do
  ( TTA=true RT=cache/rt40 scripts/judge_fine.sh "$out/j_$n" "$n=$out/$n.ckpt" > "$out/j_$n.log" 2>&1
    "$py" scripts/eval_locator.py cache/accept_fs/manifest.csv --tta --pipeline --model-dir "$out/j_$n/export_$n" \
      > "$out/accept_fs_$n.txt" 2>&1 ) &
done
"$py" scripts/val_failure_modes.py --tta models/fine.ckpt "$out/$name.ckpt" "$out/wise_$name.ckpt" > "$out/fm.txt" 2>&1
wait
for n in "$name" "wise_$name"; do
  echo "== $n"; grep -E "^\(|real_|dev_c|lesion\(2\+3\)|rc_lesion" "$out/j_$n.log" || true
  echo "  (5) $(grep -m1 lesion_dice_median_hips "$out/j_$n/rt_$n.log" || true)"
  echo "  (7) accept_fs $(grep TOTAL "$out/accept_fs_$n.txt" || true)"
done
echo "== (6) healthy heads, false lesions (shipped first)"; grep -E "^##|^healthy +T1 +n=" "$out/fm.txt" || true
