#!/usr/bin/env bash
# Benchmark Katana's Redis broker against arq, saq, streaq, taskiq and dramatiq on the local
# Redis (127.0.0.1:6379, database 15, which it FLUSHDBs). Extra arguments go to run.py, e.g.
#   bench/run_redis_bench.sh --peers arq,katana --tasks 5000
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=bench/.venv-peers
REQUIREMENTS=bench/requirements-peers.txt
STAMP=$VENV/.installed

if [[ ! -x $VENV/bin/python ]]; then
  echo "creating $VENV"
  python3 -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # keep the venv out of git status, ruff and commits
fi
if [[ ! -f $STAMP || $REQUIREMENTS -nt $STAMP ]]; then
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r "$REQUIREMENTS"
  touch "$STAMP"
fi
# Katana runs from a venv of its own with what `pip install 'katana-task-queue[redis]'` brings,
# as the peers' venv holds only the peers: the project's dev venv also has the OpenTelemetry
# SDK, which redis-py 8 imports at start-up when it is installed (~30 ms per worker start).
KATANA_VENV=bench/.venv-katana
KATANA_STAMP=$KATANA_VENV/.installed
if [[ ! -x $KATANA_VENV/bin/python ]]; then
  echo "creating $KATANA_VENV"
  python3 -m venv "$KATANA_VENV"
  echo '*' > "$KATANA_VENV/.gitignore"
fi
if [[ ! -f $KATANA_STAMP || pyproject.toml -nt $KATANA_STAMP || constraints.txt -nt $KATANA_STAMP ]]; then
  "$KATANA_VENV/bin/pip" install --quiet --upgrade pip
  # Editable: the benchmark always runs the checkout's current code.
  "$KATANA_VENV/bin/pip" install --quiet -c constraints.txt -e '.[redis]'
  touch "$KATANA_STAMP"
fi

exec "$VENV/bin/python" bench/peers/run.py "$@"
