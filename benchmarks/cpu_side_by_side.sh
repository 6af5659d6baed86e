#!/usr/bin/env bash
# This checkout against another (e.g. the main before a change) on the CPU, in one run, alternating:
#   1. the default pretraining step (step_overhead.py's default cases, each tree's own script and code);
#   2. `simclrv2 demo` end to end: wall time and its results table.
#
#   git worktree add --detach /tmp/before <commit>
#   bash benchmarks/cpu_side_by_side.sh /tmp/before OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
other=$(cd "${1:?usage: cpu_side_by_side.sh OTHER_CHECKOUT OUT_DIR}" && pwd)
out=$(mkdir -p "${2:?usage: cpu_side_by_side.sh OTHER_CHECKOUT OUT_DIR}" && cd "$2" && pwd)
this=$PWD
export PYTHONUNBUFFERED=1
for tree in "$other" "$this"; do
  name=$([ "$tree" = "$this" ] && echo this || echo other)
  echo "== $name ($tree: $(git -C "$tree" rev-parse --short HEAD))"
  (cd "$tree" && PYTHONPATH="$tree/src" python3 benchmarks/step_overhead.py --steps 5) 2>&1 | tee "$out/step_$name.txt"
done
for tree in "$other" "$this"; do
  name=$([ "$tree" = "$this" ] && echo this || echo other)
  start=$(date +%s.%N)
  (cd "$out" && PYTHONPATH="$tree/src" python3 -m simclrv2 demo --out "$out/demo_$name") > "$out/demo_$name.txt" 2>&1
  end=$(date +%s.%N)
  echo "== demo $name: $(python3 -c "print(f'{$end - $start:.0f} s')")" | tee -a "$out/demo_times.txt"
  grep "^|" "$out/demo_$name.txt"
done
