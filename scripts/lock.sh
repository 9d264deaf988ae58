#!/usr/bin/env bash
# Re-resolve Moola's dependencies in a fresh virtual environment and write constraints.txt: the
# exact version of every package a full set-up installs (the lock file). scripts/setup.sh and
# scripts/ops_venv.sh install from it, so two fresh machines get the same versions. Run it after
# changing pyproject.toml's dependencies, review the diff, commit both.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${MOOLA_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/pip" --quiet --disable-pip-version-check)
"${pip[@]}" install "torch==$TORCH_VERSION"
"${pip[@]}" install '.[ml,real,report,dev]'
{
  echo "# Exact versions of every package of a full Moola set-up (the lock file)."
  echo "# Written by scripts/lock.sh from pyproject.toml; installed with pip install -c."
  echo "# torch's local label (+cpu) is dropped: scripts/setup.sh installs the local CPU wheel."
  "$work/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check \
    | grep -v -i '^moola[ =@]' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
