"""The fact registry, pyinfra style: every fact tested from recorded {command, output, parsed}
files (tests/data/facts/), one parser per fact, and no remote shell built outside commands/."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from moola_ops.deploy.commands import facts
from moola_ops.hosts.layout import Layout
from moola_ops.transport import agent

ROOT = Path(__file__).parents[2]
RECORDED = sorted((ROOT / "tests" / "data" / "facts").glob("*.json"))
WS = Layout("/workspace/moola")
AGENT = "<AGENT_HASH>"


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_fact(path):
    case = json.loads(path.read_text())
    fact = facts.FACTS[case["fact"]]
    # what the host is asked (the agent's folder is named by its content hash, which changes
    # with every change to the agent: recorded as a placeholder)
    asked = fact.command(WS, "python3").replace(agent.HASH, AGENT)
    assert asked == case["command"]
    assert _plain(fact.parse(case["output"])) == case["parsed"]  # what Moola reads from it


def test_every_fact_has_recordings_and_exactly_one_parser():
    recorded = {json.loads(p.read_text())["fact"] for p in RECORDED}
    assert set(facts.FACTS) <= recorded, set(facts.FACTS) - recorded
    # one parser per fact: no two facts share one, and no other parse_* of a fact's name
    # exists anywhere in moola_ops (the old @@/### duplicates are gone)
    parsers = [f.parse for f in facts.FACTS.values()]
    assert len({id(p) for p in parsers}) == len(parsers)
    defined: dict[str, list[str]] = {}
    for module in (ROOT / "moola_ops").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("parse_"):
                defined.setdefault(node.name, []).append(str(module.relative_to(ROOT)))
    for name in facts.FACTS:
        homes = defined.get(f"parse_{name}", [])
        assert homes == ["moola_ops/deploy/commands/facts.py"], (name, homes)
    for other in ("parse_free_disk", "parse_df", "parse_light_facts", "split_sections"):
        assert len(defined.get(other, [])) <= 1, (other, defined.get(other))


def test_one_gatherer_combines_any_subset_into_one_command():
    cmd = facts.gather(WS, "python3", ("current", "lock"))
    assert cmd.count(f"echo '{facts.SECTION}") == 3  # two facts and the end marker
    output = "### current\n### lock\n1700000600 1700000000\n{}\n### end\n"
    parsed = facts.parse(output)
    assert parsed.asked == ("current", "lock") and parsed.lock.age_s == 600
    assert parsed.current is None and parsed.current_problem is None  # no link: no release yet


def test_current_counts_only_as_a_deployed_release_inside_the_workspace():
    def host(link_case, revisions):
        lines = json.loads((ROOT / f"tests/data/facts/current-{link_case}.json").read_text())
        out = "### current\n" + "\n".join(lines["output"]) + "\n### releases\n"
        out += "v0.3 " + "2" * 64 + "\n### revisions\n" + "\n".join(revisions) + "\n### end\n"
        return facts.parse(out)

    deployed = '{"action":"deploy","version":"v0.3","sha256":"' + "2" * 64 + '"}'
    assert host("release", [deployed]).current == "v0.3"
    for case, why in [
        ("etc", "not a release in this workspace"),
        ("copy-outside", "not a release in this workspace"),
        ("dangling", "does not resolve"),
    ]:
        found = host(case, [deployed])
        assert found.current is None and why in found.current_problem, case
    never = host("release", ['{"action":"deploy","version":"v0.2"}'])
    assert never.current is None and "never deployed" in never.current_problem
    other = '{"action":"deploy","version":"v0.3","sha256":"' + "9" * 64 + '"}'
    swapped = host("release", [other])
    assert swapped.current is None and "not the one deployed" in swapped.current_problem


# Shell syntax that only a remote command contains. Modules that decide what runs on a host
# must get such strings from the pure builders (Kamal's rule), never build them: every module
# of moola_ops but the builders is checked, the transport's session and the engine included.
SHELL = re.compile(
    r"&&|\|\||2>/dev/null|\$\(|\brm -[rf]|\bmkdir\b|\breadlink\b|\bln -s|\bmv -T|\btar -c|"
    r"\bkill -|\bsh -c\b"
)
OPS = ROOT / "moola_ops"
# the pure builders: the deploy commands, serving's commands, the remote layout, and how the
# transport wraps and stops every command
BUILDERS = (
    OPS / "deploy" / "commands",
    OPS / "serving" / "commands.py",
    OPS / "hosts" / "layout.py",
    OPS / "transport" / "process.py",
    OPS / "transport" / "agent.py",
)
# Text for a person that names a command is not a command: a span in backticks ("run `ruff
# check --fix . && ruff format .`"), or a local task spelled out ("invoke bundle && ...").
FOR_A_PERSON = re.compile(r"`[^`]*`")


def _modules_outside_commands() -> list[Path]:
    found = sorted(
        p
        for p in OPS.rglob("*.py")
        if p not in BUILDERS and not any(b in p.parents for b in BUILDERS)
    )
    assert len(found) > 60 and OPS / "deploy" / "stages.py" in found
    return found


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_shell_string_is_built_outside_commands():
    found = []
    for module in _modules_outside_commands():
        tree = ast.parse(module.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and not node.value.startswith("invoke ")
                and SHELL.search(FOR_A_PERSON.sub("", node.value))
            ):
                found.append(f"{module.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_only_the_engines_stages_put_a_release_on_a_host():
    # `shadow start` once staged, uploaded and extracted a bundle itself: past the signature
    # rule, the full bundle check and the deploy lock that deploy applies
    engine = OPS / "deploy"
    puts = {"upload", "stage", "staged_archive", "promote"}
    found = []
    for module in _modules_outside_commands():
        if module.parent == engine or module.parent.name == "transport":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if call and node.func.attr in puts:
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                if node.func.attr == "upload" or name in ("release_cmd", "release"):
                    found.append(f"{module.relative_to(ROOT)}:{node.lineno}: {node.func.attr}")
    assert not found, "put a release on a host through engine.deploy or engine.place:\n" + (
        "\n".join(found)
    )
