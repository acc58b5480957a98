#!/usr/bin/env bash
# GPU readiness check: installs jax's CUDA plugin (the '.[cuda]' extra, nothing else), then runs
# every benchmark at GPU batch sizes; one JSON line per benchmark on stdout, progress on stderr.
# Under 8 minutes on an H100/H200 class GPU. Extra arguments go to run_all.py, e.g.
#   benchmarks/gpu.sh --only fitting,train      benchmarks/gpu.sh --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install -q -e '.[cuda]'
exec "$PYTHON" benchmarks/run_all.py --device gpu "$@"
