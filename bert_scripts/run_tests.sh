#!/usr/bin/env bash
# The test suite with all set-up done: create .venv if missing, install requirements-dev.txt when
# the requirement files changed, then run the offline tests and the linter (what CI runs).
#
#   bash bert_scripts/run_tests.sh
source "$(dirname "$0")/common.sh"

ensure_venv requirements-dev.txt
cd "$REPO_ROOT"
announce "python -m pytest -q -m \"not slow\""
"$PYTHON" -m pytest -q -m "not slow"
announce "ruff check ."
"$PYTHON" -m ruff check .
