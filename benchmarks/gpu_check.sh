#!/usr/bin/env bash
# One-shot GPU check (issue 16): the throughput benchmark, as much of configs/cifar.yaml as fits
# and a comparison, in at most --budget seconds (540 by default); see benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh [--data PATH] [--out DIR] [--budget S] [--wheels DIR] [--dry-run]
# The Python is $PYTHON, else python3: on a GPU machine the one that holds its own torch build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
# unbuffered, so that a log or a remote caller sees each step as it starts
PYTHONUNBUFFERED=1 exec "$python" "$here/gpu_check.py" "$@"
