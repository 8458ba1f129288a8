#!/usr/bin/env bash
# After a fine_fskd* turn: wait for its last full state, make the step's weights and the rule's WiSE-FT candidates,
# pre-screen them in the rule's order and judge the first that passes the pre-screen (the rules' sequence; the judge's
# table is read and the rule applied by whoever ships: scripts/ship_fine.py).
#
#   scripts/after_turn.sh STATE START OUT NAME:N [NAME:N ...]
#     STATE  the run's full state at its last step (e.g. outputs/train/fine_fskd37/run1/checkpoints/step1000.ckpt),
#            waited for until it exists and its size holds for 30 s
#     START  the turn's start (the shipped fine network it was held to)
#     OUT    folder for the weights and candidates (e.g. models/training/fine_fskd37)
#     NAME:N a candidate: the uniform average of START counted N times and the step's weights (WiSE-FT alpha 1/(N+1)):
#            a:2 is alpha 1/3, b:1 alpha 1/2, b:4 alpha 1/5
#   FL_MAX (default 1), HEADS_MIN (31): the pre-screen's lines for accept_fs (false lesions, heads of 32); healthy
#   T1 heads with a false lesion must be 0. ONFH_REAL_DATA: the real development scans, as for the judge.
# Writes OUT/weights_step<step>.ckpt, OUT/<NAME>.ckpt, outputs/prescreen_<NAME>/, outputs/judge_<NAME>/; development
# data only. Prints one line per step.
set -euo pipefail
state=${1:?state}; start=${2:?start}; out=${3:?out dir}; shift 3
[ $# -ge 1 ] || { echo "error: no candidate NAME:N" >&2; exit 2; }
cd "$(dirname "$0")/.."
py=.venv/bin/python
fl_max=${FL_MAX:-1}; heads_min=${HEADS_MIN:-31}
[ -f "$start" ] || { echo "error: no start checkpoint at $start" >&2; exit 2; }
mkdir -p "$out"
last=-1
while :; do
  if [ -f "$state" ]; then
    size=$(stat -c %s "$state")
    [ "$size" = "$last" ] && break
    last=$size
  fi
  sleep 30
done
step=$(basename "$state" .ckpt | tr -dc 0-9)
weights=$out/weights_step$step.ckpt
"$py" scripts/average_ckpts.py "$weights" "$state" > /dev/null
echo "$(date -u +%H:%M) weights: $weights $(sha256sum "$weights" | cut -c1-8)"
for cand in "$@"; do
  name=${cand%%:*}; n=${cand#*:}
  parts=(); for _ in $(seq "$n"); do parts+=("$start"); done
  "$py" scripts/average_ckpts.py "$out/$name.ckpt" "${parts[@]}" "$weights" > /dev/null
  echo "$(date -u +%H:%M) $name (alpha 1/$((n + 1))): $out/$name.ckpt $(sha256sum "$out/$name.ckpt" | cut -c1-8)"
  scripts/prescreen_fine.sh "$out/$name.ckpt" "outputs/prescreen_$name" | tee "outputs/prescreen_$name.txt"
  verdict=$("$py" - "outputs/prescreen_$name.txt" "$fl_max" "$heads_min" <<'PY'
import re, sys
text, fl_max, heads_min = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
acc = re.search(r"visible heads found (\d+)/\d+.*false heads (\d+).*0\.5 mL (\d+)", text)
t1 = re.search(r"healthy +T1 +n= *\d+ +false lesion > 0\.5 mL: (\d+)", text)
if not (acc and t1):
    print("unreadable")
else:
    heads, false_heads, fl = map(int, acc.groups())
    ok = heads >= heads_min and false_heads == 0 and fl <= fl_max and int(t1.group(1)) == 0
    print("passes" if ok else f"fails (heads {heads}, false heads {false_heads}, false lesions {fl}, T1 {t1.group(1)})")
PY
)
  echo "$(date -u +%H:%M) pre-screen of $name: $verdict"
  if [ "$verdict" = passes ]; then
    WISE=0 SLAB=1 RETEST=1 scripts/judge_milestone.sh "$out/$name.ckpt" "outputs/judge_$name" > "outputs/judge_$name.log" 2>&1
    tail -n 25 "outputs/judge_$name.log"
    echo "$(date -u +%H:%M) judged $name: outputs/judge_$name.log (apply the rule; the next candidate is judged only if it fails)"
    exit 0
  fi
done
echo "$(date -u +%H:%M) no candidate passed the pre-screen"
