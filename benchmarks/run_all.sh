#!/usr/bin/env bash
# Smoke test: every benchmark once with --quick (small sizes, 2 repeats). The numbers it prints
# mean little; it only shows that each script still runs. Not run by CI.
# Full runs, one at a time on a quiet machine: see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for bench in threads commands process stream memory; do
    echo
    "$PY" "benchmarks/bench_${bench}.py" --quick --repeats 2
done
echo
"$PY" benchmarks/bench_threads.py --quick --repeats 2 --backend trio
echo
echo "all benchmarks ran (--quick)"
