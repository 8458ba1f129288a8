#!/usr/bin/env bash
# A fine-tuning milestone judged with every measurement the rules of configs/experiment/fine_fsplain2.yaml,
# fine_fsplain3.yaml, fine_fskd.yaml and fine_fskd2.yaml name:
#
#   scripts/judge_milestone.sh CKPT OUT_DIR [PAUSE]      e.g.  outputs/train/fine_fsplain3/run1/checkpoints/step1500.ckpt
#                                                              outputs/judge_fsplain3 "onfh-train experiment=fine_fsplain3"
#   WISE=0 scripts/judge_milestone.sh CKPT OUT_DIR       the fine_fskd* rules: the milestone alone (no weight average)
#                                                        and (2)'s shipped reference (models/ on dev_c8 and dev_c9)
#
# Per candidate (the milestone and, unless WISE=0, its weight average with the shipped fine network, WiSE-FT alpha
# 0.5): scripts/judge_fine.sh with TTA=true RT=cache/rt40 (rules (1)-(5); real development scans from
# $ONFH_REAL_DATA) and scripts/eval_locator.py on cache/accept_fs --tta --pipeline (rule (7); made by
# scripts/make_accept_like.sh); once for the shipped network and the candidates: scripts/val_failure_modes.py --tta
# (rule (6)). PAUSE: a training run's command line (pkill -f) that is stopped while judging and continued after, also
# on error. About 16 minutes per candidate on the 2-core CPU machine. Development data only, never a held-out cohort.
#   SLAB=1 (with WISE=0; the fine_fskd5 rule's (9)): also scripts/eval_locator.py --tta --pipeline on the thin-slab
#   development cohorts cache/slab_edge2, slab_stress and slab_wide, for the milestone and the shipped network
#   (lines TOTAL and LESION), about 10 more minutes.
#   RETEST=1 (with WISE=0; the fine_fskd6 rule's (5)): also onfh-eval on the retest cohort cache/f3 for the milestone,
#   on cache/rt40 and cache/f3 for the shipped network (kept in OUT_DIR/shipped_rt40, shipped_f3 when already there,
#   so they may be measured ahead with the same code), and scripts/rc_paired.py on both cohorts pooled.
# The shipped network's eval_locator tables (OUT_DIR/shipped_<cohort>.txt) are likewise kept when already complete.
set -euo pipefail
ck=${1:?milestone checkpoint}; out=${2:?out dir}; pause=${3:-}; wise=${WISE:-1}; slab=${SLAB:-0}; retest=${RETEST:-0}
SLABS=(slab_edge2 slab_stress slab_wide)
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
py=.venv/bin/python
[ -f cache/accept_fs/manifest.csv ] || { echo "error: cache/accept_fs missing (scripts/make_accept_like.sh)" >&2; exit 2; }
mkdir -p "$out"
name=$(basename "$ck" .ckpt)
cp "$ck" "$out/$name.ckpt"
names=("$name")
if [ "$wise" != 0 ]; then
  "$py" scripts/average_ckpts.py "$out/wise_$name.ckpt" models/fine.ckpt "$out/$name.ckpt"
  names+=("wise_$name")
fi
if [ -n "$pause" ]; then
  pkill -STOP -f "$pause" || true
  trap 'pkill -CONT -f "$pause" || true' EXIT
fi
for n in "${names[@]}"; do
  ( TTA=true RT=cache/rt40 scripts/judge_fine.sh "$out/j_$n" "$n=$out/$n.ckpt" > "$out/j_$n.log" 2>&1
    "$py" scripts/eval_locator.py cache/accept_fs/manifest.csv --tta --pipeline --threads 1 \
      --model-dir "$out/j_$n/export_$n" > "$out/accept_fs_$n.txt" 2>&1
    if [ "$slab" = 1 ]; then
      for c in "${SLABS[@]}"; do
        "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --tta --pipeline --threads 1 \
          --model-dir "$out/j_$n/export_$n" > "$out/${c}_$n.txt" 2>&1
      done
    fi
    if [ "$retest" = 1 ]; then
      .venv/bin/onfh-eval cohort=cache/f3/manifest.csv model_dir="$out/j_$n/export_$n" out_dir="$out/f3_$n" workers=1 \
        tta=true > "$out/f3_$n.log" 2>&1 || true
    fi ) &
done
ckpts=(); for n in "${names[@]}"; do ckpts+=("$out/$n.ckpt"); done
( "$py" scripts/val_failure_modes.py --tta models/fine.ckpt "${ckpts[@]}" > "$out/fm.txt" 2>&1
  if [ "$wise" = 0 ]; then  # (2)'s shipped reference, measured in the same run
    for c in dev_c8 dev_c9; do
      grep -q TOTAL "$out/shipped_$c.txt" 2>/dev/null || "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --model-dir models --threads 1 --tta > "$out/shipped_$c.txt" 2>&1
    done
  fi
  if [ "$slab" = 1 ]; then
    for c in "${SLABS[@]}"; do
      grep -q TOTAL "$out/shipped_$c.txt" 2>/dev/null || \
        "$py" scripts/eval_locator.py "cache/$c/manifest.csv" --tta --pipeline --threads 1 --model-dir models \
        > "$out/shipped_$c.txt" 2>&1
    done
  fi
  if [ "$retest" = 1 ]; then
    for c in rt40 f3; do
      [ -f "$out/shipped_$c/cohort/hips.csv" ] || .venv/bin/onfh-eval cohort="cache/$c/manifest.csv" model_dir=models \
        out_dir="$out/shipped_$c" workers=1 tta=true > "$out/shipped_$c.log" 2>&1 || true
    done
  fi ) &
wait
for n in "${names[@]}"; do
  echo "== $n"; grep -E "^\(|real_|dev_c|lesion\(2\+3\)|rc_lesion|ckpt" "$out/j_$n.log" || true
  echo "  (5) $(grep -m1 lesion_dice_median_hips "$out/j_$n/rt_$n.log" || true)"
  echo "  (7) accept_fs $(grep TOTAL "$out/accept_fs_$n.txt" || true)"
  if [ "$slab" = 1 ]; then
    for c in "${SLABS[@]}"; do echo "  (9) $c $(grep -E "TOTAL|LESION" "$out/${c}_$n.txt" | tr '\n' ' ')"; done
  fi
done
if [ "$wise" = 0 ]; then
  echo "== (2) shipped: $(grep TOTAL "$out/shipped_dev_c8.txt") | $(grep TOTAL "$out/shipped_dev_c9.txt")"
fi
if [ "$retest" = 1 ]; then
  for n in "${names[@]}"; do
    echo "== (5) pooled rt40 + f3, A = shipped, B = $n: $("$py" scripts/rc_paired.py "$out/shipped_rt40/cohort/hips.csv" \
      "$out/j_$n/rt_$n/cohort/hips.csv" --also "$out/shipped_f3/cohort/hips.csv" "$out/f3_$n/cohort/hips.csv" 2>&1)"
  done
fi
if [ "$slab" = 1 ]; then
  for c in "${SLABS[@]}"; do echo "== (9) shipped $c $(grep -E "TOTAL|LESION" "$out/shipped_$c.txt" | tr '\n' ' ')"; done
fi
echo "== (6) healthy heads, false lesions (shipped first)"; grep -E "^##|^healthy +T1 +n=" "$out/fm.txt" || true
