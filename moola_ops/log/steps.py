"""The step registry: every phase and step of the deployment log, declared once.

Each step is a `Step(name, phase, proves)`: the name written in the log's `step` field, the
phase(s) whose lines carry it, and what an `ok` line of it proves. A Step is a `str` (its name),
so writers pass it as the step and readers compare with it. The engine, the checklist's phases,
`invoke bundle`, the A/B verdict, the shadow, serving and the health checks write these; the
checklist (`moola_ops.checklist.spec.CHECKS`) reads them to decide which log line proves which
step. No step or phase name is typed anywhere else (tests/unit/test_step_registry.py scans the
source for one written or compared as a literal).
"""

from __future__ import annotations

REGISTRY: list[Step] = []  # every Step, in the order declared here
PHASES: list[str] = []  # every phase name


class Step(str):
    """A log step's name with its phase(s) and what an ok line of it proves."""

    phase: tuple[str, ...]
    proves: str

    def __new__(cls, name: str, phase: str | tuple[str, ...], proves: str) -> Step:
        step = super().__new__(cls, name)
        step.phase = phase if isinstance(phase, tuple) else (phase,)
        step.proves = proves
        REGISTRY.append(step)
        return step

    def __reduce__(self):  # a copy or a pickle is the plain name
        return (str, (str(self),))


def _phase(name: str) -> str:
    PHASES.append(name)
    return name


def names() -> set[str]:
    """Every registered step name."""
    return {str(s) for s in REGISTRY}


# --- phases (the `phase` field of a log line) ---------------------------------------------------
PREFLIGHT_PHASE = _phase("preflight")
SELECT = _phase("select")
BUNDLE = _phase("bundle")
DEPLOY = _phase("deploy")
ROLLBACK = _phase("rollback")
DRILL = _phase("drill")
RESTORE_PHASE = _phase("restore")
REPAIR_PHASE = _phase("repair")
PRUNE_PHASE = _phase("prune")
LOCK_PHASE = _phase("lock")
HEALTHCHECK = _phase("healthcheck")
VERIFY_PHASE = _phase("verify")
AB = _phase("ab")
ACCEPT = _phase("accept")
SHADOW = _phase("shadow")
SERVE = _phase("serve")
PODS = _phase("pods")
# the engine's flows (moola_ops/deploy/flows.py): their steps may appear in any of them
FLOWS = (DEPLOY, ROLLBACK, DRILL, RESTORE_PHASE, REPAIR_PHASE, PRUNE_PHASE, SHADOW)

# --- run-level lines (host "") ------------------------------------------------------------------
OPEN = Step("open", FLOWS, "a run started: its hosts, bundle and sha256")
CLOSE = Step("close", FLOWS, "a run ended: its per-host verdicts")

# --- per-host steps of deploy, rollback, drill, restore, in the order they run ------------------
CONNECT = Step("connect", FLOWS, "the host answered over SSH with a known host key")
BUNDLE_VERIFY = Step(
    "bundle-verify", FLOWS, "the full `invoke bundle.verify` passed here, before any upload"
)
GATE = Step("gate", FLOWS, "phase 2's quality-gate verdict in the manifest allows shipping")
SIGNATURE = Step("signature", FLOWS, "the bundle is signed by a key the host allows")
LOCK = Step("lock", FLOWS, "the deploy lock was taken and the host's facts read")
NOOP = Step("noop", FLOWS, "the bundle is already current: nothing to do")
PREFLIGHT = Step("preflight", FLOWS, "python, torch, free disk and the GPU are there")
UPLOAD = Step("upload", FLOWS, "the archive reached incoming/<deployment>/")
PROMOTE = Step(
    "promote", FLOWS, "the upload's sha256 matched, extracted safely, verified file by file"
)
VERIFY = Step("verify", FLOWS, "a release already on the host verifies file by file")
RESTORE = Step("restore", FLOWS, "a release was put back from its snapshot, verified")
REPAIR = Step("repair", FLOWS, "a damaged release was set aside for the same bytes again")
CHECK = Step("check", FLOWS, "the runtime check (model, golden outputs, latency) passed")
SWITCH = Step("switch", FLOWS, "`current` moved, recorded in the host's revisions.log")
POST_CHECK = Step("post-check", FLOWS, "through `current`: target, checksums and smoke pass")
POST_CHECK_RUNTIME = Step(
    "post-check-runtime", FLOWS, "through `current`: the runtime check passed"
)
AUTO_ROLLBACK = Step("auto-rollback", FLOWS, "`current` went back after a failed check")
AUTO_ROLLBACK_CHECK = Step(
    "auto-rollback-check", FLOWS, "the release it went back to passed its check"
)
PRUNE = Step("prune", FLOWS, "old releases and snapshots removed (never current or its target)")
UNLOCK = Step("unlock", FLOWS, "the deploy lock was released")
CLEANUP = Step("cleanup", FLOWS, "the guard undid what a failed run did (undo stack)")
DRILL_STEP = Step("drill", DRILL, "rolled back and forward again, each switch checked")
# serving (moola_ops/serving/control.py, docs/serving.md)
SERVE_START = Step("serve-start", FLOWS, "the target's server is ready on a private port")
SERVE_CHECK = Step("serve-check", FLOWS, "real requests over HTTP answered by it within SLA")
SERVE_STANDBY = Step("serve-standby", FLOWS, "the target's warm standby passed its probe")
SERVE_SWITCH = Step("serve-switch", FLOWS, "live traffic moved to the target's server")
SERVE_POST_CHECK = Step(
    "serve-post-check", FLOWS, "real requests through the public port answered by the target"
)
SERVE_SWITCH_BACK = Step(
    "serve-switch-back", FLOWS, "traffic went back with `current` after a failed check"
)
SKIPPED = Step("skipped", FLOWS, "the host was not attempted (canary or batch failed)")
ABORTED = Step("aborted", FLOWS, "Ctrl-C or a deadline ended the host's run")
INTERNAL_ERROR = Step("internal-error", FLOWS, "a bug ended the host's run (the guard settled)")

# --- the checklist's phases 1, 2, 3, 6 and 8 (moola_ops/checklist/phases.py, cli/bundle.py,
# shadow/ab.py) -------------------------------------------------------------------------------
PREFLIGHT_LINT = Step("lint", PREFLIGHT_PHASE, "ruff check and format pass")
PREFLIGHT_TESTS = Step("tests", PREFLIGHT_PHASE, "the configured tests pass")
PREFLIGHT_DATA = Step("data", PREFLIGHT_PHASE, "data validation and leakage clean")
PREFLIGHT_MODEL = Step("model", PREFLIGHT_PHASE, "model loads, finite, deterministic")
PREFLIGHT_DOCTOR = Step("doctor", PREFLIGHT_PHASE, "dependency doctor all OK")
PREFLIGHT_STEPS = (
    PREFLIGHT_LINT,
    PREFLIGHT_TESTS,
    PREFLIGHT_DATA,
    PREFLIGHT_MODEL,
    PREFLIGHT_DOCTOR,
)
SELECT_CHOICE = Step("choice", SELECT, "a run chosen on held-out metrics")
SELECT_GATE = Step("gate", SELECT, "the chosen run passed the quality gate")
BUNDLE_BUILD = Step("build", BUNDLE, "the bundle was built and verified")
AB_COMPARE = Step("compare", AB, "the candidate beat the live release in an A/B")
ACCEPT_SIGNOFF = Step("signoff", ACCEPT, "a named person signed off")
ACCEPT_NOTES = Step("notes", ACCEPT, "release notes recorded")

# --- the shadow (moola_ops/shadow/control.py) and serving's own tasks -------------------------
SHADOW_START = Step("start", SHADOW, "the shadow's server is ready on a private port")
SHADOW_DEPRIORITISE = Step("deprioritise", SHADOW, "its threads run at nice 19 / SCHED_IDLE")
SHADOW_ROUTE = Step("route", SHADOW, "the proxy copies live traffic to it")
SHADOW_DRAIN_PREVIOUS = Step("drain-previous", SHADOW, "the shadow it replaced drained")
SHADOW_STOP = Step("stop", SHADOW, "copying stopped and the shadow's server drained")
ROTATE_TOKEN = Step("rotate-token", SERVE, "the host's client token was replaced")
# RunPod pods (moola_ops/cli/pods.py)
POD_STOP = Step("stop", PODS, "a pod was stopped (its volume stays)")
POD_RESUME = Step("resume", PODS, "a stopped pod was resumed")
POD_TERMINATE = Step("terminate", PODS, "a pod was terminated (its volume is gone)")
POD_KNOWN_HOST_PIN = Step("known-host-pin", PODS, "the pod's SSH host key was pinned")

# --- hook points (moola_ops/deploy/hooks.py): flows declare them, serving and the inventory's
# `hooks:` attach there; a user hook runs as the step `hook:<point>:<name>` ---------------------
POINT_BEFORE_UPLOAD = "before-upload"
POINT_AFTER_UPLOAD = "after-upload"  # the release is in releases/, verified, not yet checked
POINT_BEFORE_CHECK = "before-check"
POINT_AFTER_CHECK = "after-check"  # its runtime check passed; nothing switched yet
POINT_BEFORE_SWITCH = "before-switch"  # a failure here aborts: the host keeps its release
POINT_AFTER_SWITCH = "after-switch"  # `current` moved and every check after it passed
POINT_FAILED = "failed"  # the run failed on this host, after the guard undid what it did
USER_POINTS = (
    POINT_BEFORE_UPLOAD,
    POINT_AFTER_UPLOAD,
    POINT_BEFORE_CHECK,
    POINT_AFTER_CHECK,
    POINT_BEFORE_SWITCH,
    POINT_AFTER_SWITCH,
    POINT_FAILED,
)
# inside the switch stage (the engine's and serving's only): `current` just moved; its checks
# passed; it went back after a failed check. A failure at the first two makes the switch go back.
POINT_SWITCHED = "switched"
POINT_SWITCH_CHECKED = "switch-checked"
POINT_SWITCHED_BACK = "switched-back"
INNER_POINTS = (POINT_SWITCHED, POINT_SWITCH_CHECKED, POINT_SWITCHED_BACK)
HOOK = "hook"  # a user hook's step is hook:<point>:<name>


def hook_step(point: str, name: str) -> str:
    """The log step of the user hook `name` at `point`."""
    return f"{HOOK}:{point}:{name}"


# drill runs the rollback stages twice, each with a prefix
DRILL_BACK = "back-"
DRILL_FORWARD = "forward-"

# --- the lock task --------------------------------------------------------------------------
LOCK_RELEASE = Step("release", LOCK_PHASE, "our own stale lock was released")
LOCK_BREAK = Step("break", LOCK_PHASE, "a lock was broken by a named person")

# --- revisions.log actions (the host's own history) -----------------------------------------
ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"
ACTION_AUTO_ROLLBACK = "auto-rollback"
ACTION_DRILL_BACK = "drill-back"
ACTION_DRILL_FORWARD = "drill-forward"
BACK_ACTIONS = (ACTION_ROLLBACK, ACTION_AUTO_ROLLBACK, ACTION_DRILL_BACK)
FORWARD_ACTIONS = (ACTION_DEPLOY, ACTION_DRILL_FORWARD)

# --- health checks (phase healthcheck: steps fast/deep; check names inside a host's result) ----
HEALTH_FAST = Step("fast", HEALTHCHECK, "fast health check passed")
HEALTH_DEEP = Step("deep", HEALTHCHECK, "deep health check passed")
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
VERIFY_SANITY = Step("sanity", VERIFY_PHASE, "runtime check through current")
VERIFY_LATENCY = Step("latency", VERIFY_PHASE, "p99 latency within the SLA")
