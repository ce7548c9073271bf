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
if [[ ! -x .venv/bin/python ]]; then
  make setup  # the project's venv, where the katana peer runs
fi

exec "$VENV/bin/python" bench/peers/run.py "$@"
