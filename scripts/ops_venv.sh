#!/usr/bin/env bash
# The ops-only install, as a deploy or cron box has it: `.venv-ops` with `pip install '.[ops]'`
# from the same lock (constraints.txt), and no torch, numpy, pandas or pyarrow. The test suite
# drives deploy, rollback, healthcheck, log and checklist from it against real stand-in hosts
# (tests/integration/test_ops_install.py). Idempotent: a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
say() { printf 'ops venv: %s\n' "$*"; }

if [ ! -x .venv-ops/bin/python ]; then
  say "creating .venv-ops with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv-ops
fi
stamp=.venv-ops/.moola-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  say "installing moola[ops]"
  .venv-ops/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[ops]'
  touch "$stamp"
fi
heavy="$(.venv-ops/bin/python -c 'import importlib.util as u
print(" ".join(m for m in ("torch", "numpy", "pandas", "pyarrow") if u.find_spec(m)))')"
if [ -n "$heavy" ]; then
  say "the ops install pulled in $heavy: a dependency of moola[ops] needs it; fix pyproject.toml" >&2
  exit 1
fi
say "ready ($(du -sm .venv-ops | cut -f1) MB, no torch, numpy, pandas or pyarrow)"
