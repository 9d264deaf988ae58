#!/usr/bin/env bash
# Set up everything Moola needs on a fresh Debian machine: the virtual environment (.venv), torch
# pinned first so the machine's local CPU wheel is used, the project itself with every extra
# (ml, real, report, dev) at the exact versions of the lock file constraints.txt, OpenSSH's server
# for the local stand-in hosts and chromium for the report's browser test. Idempotent: a second
# run takes a second. A deploy or cron box needs less: see README, "Ops-only install".
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${MOOLA_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
say() { printf 'setup: %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the project's requirements or the lock changed since the last install.
stamp=.venv/.moola-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pinned: an unpinned torch pulls a multi-GB CUDA build; this one is the local CPU wheel.
    say "installing torch==$TORCH_VERSION"
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  fi
  say "installing moola and its dependencies (versions from constraints.txt)"
  .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt \
    -e '.[ml,real,report,dev]'
  touch "$stamp"
fi

# System packages: sshd (stand-in hosts are real OpenSSH servers), chromium (the report's test
# renders the page in a real headless browser), curl (the serving tests post as a human does).
missing=()
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  missing+=(openssh-server)
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! command -v curl >/dev/null 2>&1; then
  missing+=(curl)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}', then this script again" >&2
    exit 1
  fi
fi
# Label Studio in its own venv (.venv-labelstudio): the label loop and its tests talk to it
bash scripts/labelstudio_venv.sh
say "ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
