#!/usr/bin/env bash
# The real services the STAC tests run against: PostgreSQL 15 + PostGIS 3 with pgstac, stac-fastapi-pgstac, nginx.
#
#   bash scripts/test-services.sh install   Debian packages (postgresql, postgresql-15-postgis-3, nginx) and a
#                                           separate virtual environment .venv-stac with pypgstac + stac-fastapi-pgstac.
#                                           Idempotent; needs root (or sudo) for apt-get. Starts no service.
#   bash scripts/test-services.sh start [DIR]
#                                           Start PostgreSQL (pgstac migrated, demo world loaded), the STAC API and
#                                           nginx on free loopback ports for manual use; prints the URLs. DIR is the
#                                           state folder (default: /tmp/treemap-test-services).
#   bash scripts/test-services.sh stop [DIR]
#                                           Stop what `start` started.
#
# The tests (tests/stac) do not need `start`: their fixtures start and stop private instances themselves.
# stac-fastapi-pgstac pins fastapi/pydantic/starlette versions of its own, so it lives in .venv-stac (override with
# TREEMAP_STAC_VENV), never in the project's .venv; only its `uvicorn` and `pypgstac` executables are used.
set -euo pipefail
cd "$(dirname "$0")/.."

STAC_VENV=${TREEMAP_STAC_VENV:-$PWD/.venv-stac}
PYTHON=${PYTHON:-python3}
STAC_FASTAPI_PGSTAC_VERSION=7.2.0
PYPGSTAC_VERSION=0.10.0
PG_MAJOR=15
STATE_DIR=${2:-/tmp/treemap-test-services}

have_debs() {
  dpkg-query -W -f='${Status}\n' "$@" 2>/dev/null | grep -c "install ok installed" | grep -qx "$#"
}

install_debs() {
  local debs=(postgresql "postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-postgis-3" nginx)
  if have_debs "${debs[@]}"; then
    return
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "test-services: need root or sudo to install ${debs[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own services (the default cluster, the system nginx) from starting: the tests run private
  # instances on free ports. policy-rc.d exit 101 = "action forbidden"; an existing policy is restored afterwards.
  local policy=/usr/sbin/policy-rc.d backup=""
  if [ -e "$policy" ]; then backup=$(mktemp); "${sudo[@]}" cp -p "$policy" "$backup"; fi
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  restore() {
    if [ -n "$backup" ]; then
      "${sudo[@]}" cp -p "$backup" "$policy"; rm -f "$backup"
    else
      "${sudo[@]}" rm -f "$policy"
    fi
  }
  trap restore EXIT
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
  restore
  trap - EXIT
}

install_venv() {
  if [ -x "$STAC_VENV/bin/uvicorn" ] && [ -x "$STAC_VENV/bin/pypgstac" ] \
     && "$STAC_VENV/bin/python" - "$STAC_FASTAPI_PGSTAC_VERSION" "$PYPGSTAC_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("stac-fastapi-pgstac"), version("pypgstac")) == tuple(sys.argv[1:3]) else 1)
EOF
  then
    return
  fi
  [ -x "$STAC_VENV/bin/python" ] || "$PYTHON" -m venv "$STAC_VENV"
  "$STAC_VENV/bin/python" -m pip install -q --upgrade pip
  "$STAC_VENV/bin/python" -m pip install -q \
    "stac-fastapi-pgstac[server]==$STAC_FASTAPI_PGSTAC_VERSION" "pypgstac[psycopg]==$PYPGSTAC_VERSION"
}

case "${1:-}" in
  install)
    install_debs
    install_venv
    echo "test-services: PostgreSQL $PG_MAJOR + PostGIS 3, nginx, and $STAC_VENV (stac-fastapi-pgstac" \
         "$STAC_FASTAPI_PGSTAC_VERSION, pypgstac $PYPGSTAC_VERSION) installed" >&2
    ;;
  start)
    TREEMAP_STAC_VENV=$STAC_VENV exec .venv/bin/python tests/stac/services.py start "$STATE_DIR"
    ;;
  stop)
    TREEMAP_STAC_VENV=$STAC_VENV exec .venv/bin/python tests/stac/services.py stop "$STATE_DIR"
    ;;
  *)
    echo "usage: bash scripts/test-services.sh install|start|stop [STATE_DIR]" >&2
    exit 2
    ;;
esac
