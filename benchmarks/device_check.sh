#!/usr/bin/env bash
# The accelerator check in one call (see benchmarks/device_check.py):
#   bash benchmarks/device_check.sh            # on the GPU machine
#   bash benchmarks/device_check.sh --dry-run  # here, tiny shapes on CPU
# The GPU image has jax, flax and optax but not every package of setup.py;
# this check needs none of the others. A package it lacks travels as a
# wheel in .whl/ (see /work/.library/device/README.md) and is put on the
# path here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.device_check "$@"
