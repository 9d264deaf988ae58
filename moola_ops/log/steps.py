"""Names of phases, steps and checks in the deployment log: defined once, imported everywhere.

The engine writes these names, the health checks and phases write theirs, and the checklist
(`moola_ops.checklist.states.CHECKS`) reads them to decide which log line proves which step; a name
typed twice could drift apart, so every writer and reader imports it from here.
"""

from __future__ import annotations

# --- phases (the `phase` field of a log line) ---------------------------------------------------
DEPLOY = "deploy"
ROLLBACK = "rollback"
DRILL = "drill"
RESTORE_PHASE = "restore"
REPAIR_PHASE = "repair"
PRUNE_PHASE = "prune"
LOCK_PHASE = "lock"
HEALTHCHECK = "healthcheck"
VERIFY_PHASE = "verify"

# --- run-level lines (host "") ------------------------------------------------------------------
OPEN = "open"
CLOSE = "close"

# --- per-host steps of deploy, rollback, drill, restore, in the order they run ------------------
CONNECT = "connect"
BUNDLE_VERIFY = "bundle-verify"  # the full `invoke bundle.verify`, here, before any upload
GATE = "gate"  # phase 2's quality-gate verdict in the manifest (an override is shown)
SIGNATURE = "signature"
LOCK = "lock"  # takes the lock and reads the host's facts in the same round trip
NOOP = "noop"
PREFLIGHT = "preflight"
UPLOAD = "upload"
PROMOTE = "promote"  # uploaded archive extracted, verified file by file, renamed into releases/
VERIFY = "verify"  # a release already on the host verified file by file (nothing uploaded)
RESTORE = "restore"  # a release put back from its snapshot
REPAIR = "repair"  # a damaged release set aside before the same bytes are uploaded again
CHECK = "check"  # the runtime check of a release before the switch
SWITCH = "switch"
POST_CHECK = "post-check"  # through `current`: target, checksums, smoke
POST_CHECK_RUNTIME = "post-check-runtime"  # through `current`: the runtime check
AUTO_ROLLBACK = "auto-rollback"  # switch back after a failed post-switch check
AUTO_ROLLBACK_CHECK = "auto-rollback-check"
PRUNE = "prune"
UNLOCK = "unlock"
CLEANUP = "cleanup"  # what the guard removed after a failure (unchecked release, staging)
DRILL_STEP = "drill"
# serving (moola_ops/serving/control.py, docs/serving.md)
SERVE_START = "serve-start"  # the target's server on a private port, ready (golden parity)
SERVE_CHECK = "serve-check"  # real requests over HTTP to it: answered by it, p99 within SLA
SERVE_STANDBY = "serve-standby"  # rollback: the target's warm standby, probed before the move
SERVE_SWITCH = "serve-switch"  # live traffic moved to the target's server (proxy confirms)
SERVE_POST_CHECK = "serve-post-check"  # real requests through the public port, answered by it
SERVE_SWITCH_BACK = "serve-switch-back"  # traffic back with `current` after a failed check
SKIPPED = "skipped"
ABORTED = "aborted"
INTERNAL_ERROR = "internal-error"

# drill runs the rollback stages twice, each with a prefix
DRILL_BACK = "back-"
DRILL_FORWARD = "forward-"

# --- the lock task --------------------------------------------------------------------------
LOCK_RELEASE = "release"
LOCK_BREAK = "break"

# --- revisions.log actions (the host's own history) -----------------------------------------
ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"
ACTION_AUTO_ROLLBACK = "auto-rollback"
ACTION_DRILL_BACK = "drill-back"
ACTION_DRILL_FORWARD = "drill-forward"
BACK_ACTIONS = (ACTION_ROLLBACK, ACTION_AUTO_ROLLBACK, ACTION_DRILL_BACK)
FORWARD_ACTIONS = (ACTION_DEPLOY, ACTION_DRILL_FORWARD)

# --- health checks (phase healthcheck: steps fast/deep; check names inside a host's result) ----
HEALTH_FAST = "fast"
HEALTH_DEEP = "deep"
CHECK_SSH = "ssh"
CHECK_FACTS = "facts"
CHECK_CURRENT = "current"
CHECK_CHECKSUMS = "checksums"
CHECK_GPU = "gpu"
CHECK_DISK = "disk"
CHECK_LOCK = "lock"
CHECK_RELEASES = "releases"  # every release on disk passed its check (or served)
CHECK_MODEL = "model"
CHECK_LATENCY = "latency"
CHECK_SERVICE = "service"  # the live server: running, ready, serving current, one real request
CHECK_SERVICE_LATENCY = "service-latency"  # --deep: a burst's p99 over HTTP vs the SLA
CHECK_SUPERVISION = "supervision"  # the host's supervisor runs; no crash loop
CHECK_SERVE_CONFIG = "serve-config"  # the proxy listens where the inventory says (no drift)

# --- phase 5 (verify) steps -----------------------------------------------------------------
VERIFY_SANITY = "sanity"
VERIFY_LATENCY = "latency"
