#!/usr/bin/env bash
# Regenerates docs/img/mlflow_*.png: runs the demo into a fresh store, serves the MLflow UI on
# loopback, and screenshots it with headless Chromium (Debian package `chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
export CHUCK_HOME="$work/home"
.venv/bin/chuck demo --policy heuristic --steps 300 --out "$work/demo.png" > "$work/demo.log"
port=5077
.venv/bin/python -m mlflow ui --backend-store-uri "sqlite:///$CHUCK_HOME/mlflow.db" --host 127.0.0.1 --port $port > "$work/ui.log" 2>&1 &
ui=$!
trap 'kill $ui' EXIT
for _ in $(seq 60); do curl -fs "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.5; done
run=$(.venv/bin/python -c "
from mlflow import MlflowClient
c = MlflowClient('sqlite:///$CHUCK_HOME/mlflow.db')
print([r.info.run_id for r in c.search_runs(['1']) if 'chuck' in r.info.run_name][0])")
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$work/ud" --hide-scrollbars --window-size=1600,900 \
    --virtual-time-budget=30000 --screenshot="$1" "$2" 2> /dev/null
}
shot docs/img/mlflow_runs.png "http://127.0.0.1:$port/#/experiments/1/runs?compareRunsMode=CHART"
shot docs/img/mlflow_decisions.png "http://127.0.0.1:$port/#/experiments/1/runs/$run/artifacts/chuck/decisions.csv"
