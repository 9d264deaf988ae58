"""The eight-phase checklist as defined: checklists/deployment.yaml loaded and validated into
Checklist/Phase/Step, and `CHECKS`, which says which deployment-log line proves each check.
`moola_ops.checklist.states` derives the states from the log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError, ValidationError
from moola_ops.log import steps as names

DEFAULT_CHECKLIST = Path("checklists/deployment.yaml")

# Which log lines a step looks at, relative to the deployment being shown:
#   "before"     the newest line written before the deployment opened (preflight, select)
#   "bundle"     the newest line about the deployment's bundle version, written before it opened
#   "deployment" the lines of that deployment itself (its id), one verdict per host
#   "after"      lines about the deployment's hosts from when it opened until another
#                deployment went live on one of them (verify, rollback, health checks run
#                later); verify and health lines count only when about this deployment's release
SCOPES = ("before", "bundle", "deployment", "after")


@dataclass(frozen=True)
class Check:
    """A check a step can name: the log line (phase, step) that proves it and where to look."""

    phase: str
    step: str | tuple[str, ...]  # the log step (or any of these steps) that proves it
    scope: str
    description: str

    def proves(self, event: dict) -> bool:
        """True when the log line `event` is one this check reads."""
        names = self.step if isinstance(self.step, tuple) else (self.step,)
        return event.get("phase") == self.phase and event.get("step") in names


def _proved_by(step: names.Step, scope: str, phase: str | None = None) -> Check:
    """The check an ok line of `step` (the registry's) proves, in `scope`."""
    return Check(phase or step.phase[0], step, scope, step.proves)


CHECKS: dict[str, Check] = {
    "preflight.lint": _proved_by(names.PREFLIGHT_LINT, "before"),
    "preflight.tests": _proved_by(names.PREFLIGHT_TESTS, "before"),
    "preflight.data": _proved_by(names.PREFLIGHT_DATA, "before"),
    "preflight.model": _proved_by(names.PREFLIGHT_MODEL, "before"),
    "preflight.doctor": _proved_by(names.PREFLIGHT_DOCTOR, "before"),
    "select.choice": _proved_by(names.SELECT_CHOICE, "before"),
    "select.gate": _proved_by(names.SELECT_GATE, "before"),
    "bundle.build": _proved_by(names.BUNDLE_BUILD, "bundle"),
    # the engine's steps: promote = uploaded and verified file by file, verify = already on the
    # host and verified file by file; check = runtime check before the switch; post-check =
    # through `current` after it
    "deploy.upload": Check(
        names.DEPLOY, (names.PROMOTE, names.VERIFY), "deployment", "bundle on the host, verified"
    ),
    # a host that serves is checked by its candidate server (serve-check) or, for a release
    # whose warm standby is there, by that standby's probe (serve-standby): docs/serving.md
    "deploy.precheck": Check(
        names.DEPLOY,
        (names.CHECK, names.SERVE_CHECK, names.SERVE_STANDBY),
        "deployment",
        "runtime check before switch",
    ),
    "deploy.switch": Check(
        names.DEPLOY, names.POST_CHECK, "deployment", "switched and checked again"
    ),
    "verify.sanity": _proved_by(names.VERIFY_SANITY, "after"),
    "verify.latency": _proved_by(names.VERIFY_LATENCY, "after"),
    # invoke ab logs its verdict about the candidate bundle before that bundle is deployed
    "ab.compare": _proved_by(names.AB_COMPARE, "bundle"),
    "accept.signoff": _proved_by(names.ACCEPT_SIGNOFF, "deployment"),
    "accept.notes": _proved_by(names.ACCEPT_NOTES, "deployment"),
    "rollback.switch": Check(
        names.ROLLBACK,
        (names.POST_CHECK_RUNTIME, names.SERVE_POST_CHECK),
        "after",
        "previous release serves again, checked",
    ),
    "healthcheck.fast": _proved_by(names.HEALTH_FAST, "after"),
    "healthcheck.deep": _proved_by(names.HEALTH_DEEP, "after"),
}

# "overridden": a person shipped past a failed or missing check with a recorded reason
STATES = ("done", "failed", "pending", "skipped", "overridden")
PHASE_STATES = ("done", "failed", "pending", "not needed", "overridden")


@dataclass(frozen=True)
class Step:
    """One checklist step: automated (proved by `check`) or manual (a recorded sign-off)."""

    id: str
    title: str
    check: str
    manual: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Phase:
    """One of the eight phases, with the task that runs it and its steps."""

    number: int
    name: str
    task: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Checklist:
    """The validated checklist: eight phases in order."""

    phases: tuple[Phase, ...]

    def phase(self, number: int) -> Phase:
        """The phase with this number (1-8)."""
        return next(p for p in self.phases if p.number == number)


def load_checklist(path: str | os.PathLike = DEFAULT_CHECKLIST) -> Checklist:
    """Read and validate the checklist YAML; any mistake is a ValidationError naming it."""
    import yaml

    path = Path(path)
    if path == DEFAULT_CHECKLIST and not path.exists():
        # `invoke -r PATH` and cron run from elsewhere: the project's own checklist
        path = Path(__file__).resolve().parents[2] / DEFAULT_CHECKLIST
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MoolaError(f"checklist {path} not found: run from the project root") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValidationError(f"{path} is not valid YAML{where}: fix the syntax") from None
    return parse_checklist(data, source=str(path))


def parse_checklist(data: Any, source: str = "checklist") -> Checklist:
    """Validate an already-parsed checklist document (see `load_checklist`)."""

    def fail(message: str) -> None:
        raise ValidationError(f"{source}: {message}")

    if not isinstance(data, dict) or set(data) != {"phases"}:
        fail("the document must be a mapping with exactly one key, `phases`")
    phases = []
    for i, raw in enumerate(data["phases"] or []):
        if not isinstance(raw, dict):
            fail(f"phase #{i + 1} must be a mapping")
        unknown = set(raw) - {"number", "name", "task", "steps"}
        if unknown:
            fail(
                f"phase #{i + 1} has unknown keys {sorted(unknown)}; use number, name, task, steps"
            )
        if raw.get("number") != i + 1:
            fail(f"phase #{i + 1} must have `number: {i + 1}` (phases are numbered in order)")
        for key in ("name", "task"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                fail(f"phase {i + 1} needs a non-empty `{key}`")
        steps = []
        for j, s in enumerate(raw.get("steps") or []):
            where = f"phase {i + 1} step #{j + 1}"
            if not isinstance(s, dict):
                fail(f"{where} must be a mapping")
            unknown = set(s) - {"id", "title", "check", "manual", "optional"}
            if unknown:
                fail(f"{where} has unknown keys {sorted(unknown)}")
            for key in ("id", "title", "check"):
                if not isinstance(s.get(key), str) or not s[key].strip():
                    fail(f"{where} needs a non-empty `{key}`")
            if s["check"] not in CHECKS:
                close = [c for c in CHECKS if c.split(".")[0] == s["check"].split(".")[0]]
                hint = ", ".join(close or CHECKS)
                fail(f"{where} ({s['id']}) names unknown check {s['check']!r}; known: {hint}")
            for key in ("manual", "optional"):
                if not isinstance(s.get(key, False), bool):
                    fail(f"{where} `{key}` must be true or false")
            steps.append(
                Step(
                    s["id"],
                    s["title"],
                    s["check"],
                    s.get("manual", False),
                    s.get("optional", False),
                )
            )
        if not steps:
            fail(f"phase {i + 1} ({raw['name']}) has no steps")
        ids = [s.id for s in steps]
        if len(set(ids)) != len(ids):
            fail(f"phase {i + 1} has duplicate step ids {ids}")
        phases.append(Phase(i + 1, raw["name"], raw["task"], tuple(steps)))
    if len(phases) != 8:
        fail(f"the checklist has {len(phases)} phases; it must have the eight phases")
    return Checklist(tuple(phases))
