#!/usr/bin/env bash
# Interleaved A/B timing of onfh-infer: an earlier commit's code against the working tree, same inputs.
#
#   scripts/bench_ab.sh OLD_COMMIT MANIFEST [REPEATS=3] [WORKERS=2]
#
# OLD_COMMIT is checked out into a temporary git worktree and run through the same virtual environment
# (PYTHONPATH puts its src/ first; each version reads its own configs/; both use this checkout's models/),
# alternating old, new, old, new, ... so that load on a shared machine hits both alike. Each run writes a
# fresh out_dir (mirroring and overlay on, provider=cpu); prints "version run wall_s cpu_s summary" per run
# (cpu_s: user + system CPU seconds of the whole process tree) and the medians per version, then checks that the two versions' outputs are identical (seg bytes, JSON
# without timings, measurements.csv and errors.csv: tests/conftest.assert_same_outputs).
set -euo pipefail
old=${1:?old commit}; manifest=$(realpath "${2:?manifest}"); repeats=${3:-3}; workers=${4:-2}
root=$(cd "$(dirname "$0")/.." && pwd); py="$root/.venv/bin/python"; bin="$root/.venv/bin"
work=$(mktemp -d); trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/old" "$old" >/dev/null 2>&1
"$py" -m compileall -q "$work/old/src" "$root/src"  # both as installed packages are (bytecode compiled)
for i in $(seq "$repeats"); do
  for v in old new; do
    src="$root"; [ "$v" = old ] && src="$work/old"
    rm -rf "$work/out_$v"
    PYTHONPATH="$src/src" ONFH_SEG_CONFIGS="$src/configs" ONFH_SEG_MODELS="$root/models" \
      /usr/bin/time -o "$work/time" -f "%e %U %S" \
      "$bin/onfh-infer" input="$manifest" out_dir="$work/out_$v" workers="$workers" provider=cpu > "$work/$v.log" 2>&1
    read -r wall user sys < "$work/time"
    echo "$v $i $wall $("$py" -c "print(f'{$user + $sys:.1f}')") $(tail -n 1 "$work/$v.log")" | tee -a "$work/times.txt"
  done
done
"$py" - "$work" "$root" <<'PY'
import statistics, sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[2]) / "tests"))
work = Path(sys.argv[1])
times: dict[str, list[tuple[float, float]]] = {}
for line in (work / "times.txt").read_text().splitlines():
    v, _, wall, cpu = line.split()[:4]
    times.setdefault(v, []).append((float(wall), float(cpu)))
for v, runs in times.items():
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    print(f"{v}: wall median {statistics.median(walls):.1f} s ({min(walls):.1f}-{max(walls):.1f}), CPU median "
          f"{statistics.median(cpus):.1f} s ({min(cpus):.1f}-{max(cpus):.1f}) over {len(runs)} runs")
from conftest import assert_same_outputs
assert_same_outputs(work / "out_new", work / "out_old")
print("outputs identical (seg, JSON without timings, measurements.csv, errors.csv)")
PY
