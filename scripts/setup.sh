#!/usr/bin/env bash
# Set up treemap in ./.venv on a fresh Debian/Ubuntu machine.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus the test extras, GDAL's command line (Debian gdal-bin) and the test
#                                  services (scripts/test-services.sh install: PostgreSQL/PostGIS, pgstac, nginx)
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ "$want_test" = 1 ] && ! command -v gdalinfo >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gdal-bin >/dev/null
  else
    echo "setup: gdal-bin is missing; install it (e.g. sudo apt-get install gdal-bin) for the GDAL checks" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
fi
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
  # the real servers the STAC tests talk to (PostgreSQL/PostGIS + pgstac, stac-fastapi-pgstac, nginx)
  bash scripts/test-services.sh install
  # open_clip's tokenizer is the reference for tokenizer parity; its package is never installed or imported
  # (it needs torchvision), the tests read tokenizer.py and the vocabulary out of the wheel.
  if ! ls .venv/test-wheels/open_clip_torch-*.whl >/dev/null 2>&1; then
    .venv/bin/python -m pip download -q --no-deps "open_clip_torch==3.3.0" -d .venv/test-wheels
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: treemap installed in .venv" >&2
