#!/usr/bin/env bash
# Regenerates docs/img/mlflow_*.png: runs the demo into a fresh store, then runs the browser test
# (tests/tracking/test_ui.py::test_the_run_page_in_a_real_browser) on that store: it starts `chuck ui`, drives
# headless Chromium (Debian package `chromium`) through the pages a person looks at (runs view, run
# overview, model metrics, decision table, timeline), checks them and keeps the screenshots here.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CHUCK_HOME="$work/home"
.venv/bin/chuck demo --steps 300 --out docs/img/demo_timeline.png > "$work/demo.log"
CHUCK_UI_STORE="sqlite:///$CHUCK_HOME/mlflow.db" CHUCK_SCREENSHOTS="$PWD/docs/img" \
  .venv/bin/python -m pytest -q -p no:cacheprovider "tests/tracking/test_ui.py::test_the_run_page_in_a_real_browser"
ls -l docs/img/mlflow_*.png docs/img/demo_timeline.png
