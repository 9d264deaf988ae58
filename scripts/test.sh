#!/usr/bin/env bash
# Run the whole test suite the way CI does: set-up (fast when already done), the ops-only
# install beside it (.venv-ops, proved by tests/integration/test_ops_install.py), lint, format,
# the import contracts (pyproject.toml [tool.importlinter]), pytest. Extra arguments go to
# pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ops_venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
