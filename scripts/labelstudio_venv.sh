#!/usr/bin/env bash
# Label Studio in its own virtual environment, `.venv-labelstudio` (git-ignored): its exact pins
# (Django, pandas, numpy, pyarrow, ...) clash with Moola's, and Moola only talks to it over its
# REST API, so it never shares an interpreter with Moola. Versions come from the lock file
# constraints-labelstudio.txt. Idempotent: a second run takes a fraction of a second.
#
#   bash scripts/labelstudio_venv.sh          install or check (scripts/setup.sh calls it)
#   bash scripts/labelstudio_venv.sh --lock   re-resolve LABEL_STUDIO_VERSION in a fresh venv and
#                                             rewrite constraints-labelstudio.txt (review, commit)
#
# MOOLA_SKIP_LABELSTUDIO=1 skips it (a deploy or cron box never needs Label Studio).
set -euo pipefail
cd "$(dirname "$0")/.."

LABEL_STUDIO_VERSION="1.23.2"
PYTHON="${PYTHON:-python3}"
VENV=.venv-labelstudio
LOCK=constraints-labelstudio.txt
say() { printf 'label studio: %s\n' "$*"; }

if [ "${MOOLA_SKIP_LABELSTUDIO:-}" = 1 ]; then
  say "skipped (MOOLA_SKIP_LABELSTUDIO=1)"
  exit 0
fi

if [ "${1:-}" = --lock ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check "label-studio==$LABEL_STUDIO_VERSION"
  {
    echo "# Exact versions of every package of .venv-labelstudio (Label Studio's own lock file)."
    echo "# Written by scripts/labelstudio_venv.sh --lock; installed with pip install -c."
    "$work/venv/bin/pip" freeze --disable-pip-version-check | LC_ALL=C sort -f
  } > "$LOCK"
  say "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
  exit 0
fi

stamp="$VENV/.moola-installed"
if [ -f "$stamp" ] && [ ! "$LOCK" -nt "$stamp" ] && [ ! "$0" -nt "$stamp" ]; then
  exit 0  # installed from this lock already
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
say "installing label-studio==$LABEL_STUDIO_VERSION (versions from $LOCK; a few minutes the first time)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$LOCK" "label-studio==$LABEL_STUDIO_VERSION"
# (not `label-studio --version`: it migrates a database in the home folder first)
"$VENV/bin/python" -c "import label_studio" || {
  say "label-studio was installed but does not import: see '$VENV/bin/python -c \"import label_studio\"'" >&2
  exit 1
}
# A migrated, empty SQLite database: each start copies it into its data folder instead of
# migrating one from scratch (minutes on a small machine; moola_ops/labeling/server.py).
template="$VENV/moola-template/label_studio.sqlite3"
if [ ! -f "$template" ]; then
  say "migrating an empty database once (the template every start copies)"
  work="$(mktemp -d)"
  venv_abs="$(cd "$VENV" && pwd)"
  app="$("$VENV/bin/python" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')"
  (cd "$app" && env LABEL_STUDIO_BASE_DATA_DIR="$work" LABEL_STUDIO_LATEST_VERSION_CHECK=false \
    LABEL_STUDIO_COLLECT_ANALYTICS=false LABEL_STUDIO_SENTRY_DSN= \
    "$venv_abs/bin/python" manage.py migrate --no-color -v 0 >"$work/migrate.log" 2>&1) || {
    say "migrating the template database failed: $(tail -3 "$work/migrate.log")" >&2
    rm -rf "$work"
    exit 1
  }
  mkdir -p "$(dirname "$template")"
  cp "$work/label_studio.sqlite3" "$template.tmp" && mv "$template.tmp" "$template"
  rm -rf "$work"
fi
touch "$stamp"
say "ready ($(du -sm "$VENV" | cut -f1) MB in $VENV)"
