"""The step registry (moola_ops/log/steps.py) is the log's contract: every step a writer puts in
the deployment log and every step the checklist reads is declared there once, with its phase
and what it proves; no step or phase name is typed as a literal where a line is written or read.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

from moola_ops.checklist.spec import CHECKS
from moola_ops.log import steps

OPS = Path(__file__).parents[2] / "moola_ops"
REGISTRY_FILE = OPS / "log" / "steps.py"
FIELDS = ("step", "phase")


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _names_a_field(node) -> bool:
    """`e["step"]`, `e.get("phase")` and the like: a log line's step or phase read."""
    if isinstance(node, ast.Subscript):
        return _literal(node.slice) in FIELDS
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and bool(node.args)
        and _literal(node.args[0]) in FIELDS
    )


def _receiver(call: ast.Call) -> str:
    value = call.func.value if isinstance(call.func, ast.Attribute) else None
    if isinstance(value, ast.Call):
        return getattr(value.func, "id", "") or getattr(value.func, "attr", "")
    return getattr(value, "id", "") or getattr(value, "attr", "")


def step_literals(source: str, *, checklist: bool) -> list[tuple[int, str]]:
    """(line, literal) of every string typed where a log line's step or phase is written or
    read: ctx.step / journal.step / journal.record / ctx.record, the checklist's `_run_step`
    and `Check(...)`, `Journal(phase)`, `step=` / `phase=` keywords, comparisons with a line's
    step or phase."""
    found: list[tuple[int, str]] = []

    def add(node) -> None:
        text = _literal(node)
        if text is not None:
            found.append((node.lineno, text))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            journal_like = "journal" in _receiver(node).lower() or _receiver(node) == "Journal"
            if name == "step" and args:
                add(args[1] if len(args) > 1 else args[0])
            elif name == "record" and args:
                add(args[1] if journal_like and len(args) > 1 else args[0])
            elif name in ("_run_step", "_journal") and args:
                add(args[1] if name == "_run_step" and len(args) > 1 else args[0])
            elif name == "Journal" and args:
                add(args[0])
            elif name == "Check" and checklist:
                for arg in args[:2]:
                    add(arg)
            for kw in node.keywords:
                if kw.arg in FIELDS:
                    add(kw.value)
        elif isinstance(node, ast.Compare) and len(node.comparators) == 1:
            left, right = node.left, node.comparators[0]
            if _names_a_field(left):
                items = right.elts if isinstance(right, ast.Tuple | ast.List | ast.Set) else [right]
                for item in items:
                    add(item)
    return found


def test_no_step_or_phase_name_is_typed_outside_the_registry():
    hits = []
    for module in sorted(OPS.rglob("*.py")):
        if module == REGISTRY_FILE:
            continue
        checklist = "checklist" in module.parts
        for line, text in step_literals(module.read_text(), checklist=checklist):
            hits.append(f"{module.relative_to(OPS.parent)}:{line}: {text!r}")
    assert not hits, "declare these in moola_ops/log/steps.py and import them:\n" + "\n".join(hits)


def test_the_scan_finds_each_way_a_step_is_written_or_read():
    source = """
with ctx.step("upload"): pass
with journal.step(host, "switch"): pass
Journal("bundle").record("", "build", "ok")
ctx.record("aborted", "aborted")
_run_step(journal, "choice", fn)
Check("select", "gate", "before", "x")
journal.append(Event(phase="deploy", step="noop"))
if e.get("step") == "post-check" or e["phase"] in ("ab", "accept"): pass
with ctx.step(steps.UPLOAD): pass
"""
    found = [text for _, text in step_literals(source, checklist=True)]
    assert sorted(found) == sorted(
        [
            "upload",
            "switch",
            "bundle",
            "build",
            "aborted",
            "choice",
            "select",
            "gate",
            "deploy",
            "noop",
            "post-check",
            "ab",
            "accept",
        ]
    )


def test_every_step_declares_its_phase_and_what_it_proves_once():
    seen = set()
    for step in steps.REGISTRY:
        assert step.proves and step.phase, step
        assert set(step.phase) <= set(steps.PHASES), (step, step.phase)
        for phase in step.phase:
            assert (str(step), phase) not in seen, f"{step} declared twice in phase {phase}"
            seen.add((str(step), phase))
    # a Step is its name wherever a str goes: the log, JSON, a copy, a pickle
    assert steps.CHECK == "check" and pickle.loads(pickle.dumps(steps.CHECK)) == "check"
    assert type(pickle.loads(pickle.dumps(steps.CHECK))) is str


def test_every_check_of_the_checklist_reads_a_registered_step_of_its_phase():
    registered = {(str(s), p) for s in steps.REGISTRY for p in s.phase}
    for key, check in CHECKS.items():
        for name in check.step if isinstance(check.step, tuple) else (check.step,):
            assert (name, check.phase) in registered, key
