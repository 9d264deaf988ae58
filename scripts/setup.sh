#!/usr/bin/env bash
# Set up everything Moola needs on a fresh Debian machine: the virtual environment (.venv), torch
# pinned first so the machine's local CPU wheel is used, the project itself with its dev extras,
# and OpenSSH's server for the local stand-in hosts. Idempotent: a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${MOOLA_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
say() { printf 'setup: %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the project's requirements changed since the last successful install.
stamp=.venv/.moola-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pinned: an unpinned torch pulls a multi-GB CUDA build; this one is the local CPU wheel.
    say "installing torch==$TORCH_VERSION"
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  fi
  say "installing moola and its dependencies"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,real]'
  touch "$stamp"
fi

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing openssh-server (local stand-in hosts are real sshd processes)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq openssh-server >/dev/null
  else
    say "sshd is missing: run 'sudo apt-get install -y openssh-server', then this script again" >&2
    exit 1
  fi
fi
say "ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
