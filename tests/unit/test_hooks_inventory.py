"""Inventory `hooks:` (docs/runbook.md "Hooks"): defaults, groups and hosts, in that order per
point, a host's hook replacing one of the same name; malformed hooks refused with the field and
line; the undo stack the guard unwinds."""

from __future__ import annotations

from pathlib import Path

import pytest

from moola_core.errors import MoolaError
from moola_ops.deploy.undo import UndoStack
from moola_ops.hosts.inventory import Hook, load_inventory
from tests.unit.test_inventory import write

WITH_HOOKS = """\
defaults:
  hooks:
    before-switch:
      - name: disk-ok
        run: "test $(df -P . | awk 'NR==2 {print $4}') -gt 1000"
hosts:
  gpu-1:
    hostname: 203.0.113.10
    groups: [prod]
    hooks:
      before-switch:
        - name: warm-cache
          run: curl -fsS http://127.0.0.1:9000/warm
          timeout: 30
      after-switch:
        - name: announce
          run: echo "$MOOLA_HOST runs $MOOLA_VERSION" >> deploys.txt
          where: local
  gpu-2:
    hostname: 203.0.113.11
    groups: [prod]
    hooks:
      before-switch:
        - name: disk-ok
          run: "true"
groups:
  prod:
    hooks:
      failed:
        - name: page
          run: echo "$MOOLA_FAILURE" >> failures.txt
          where: local
"""


def test_hooks_come_from_defaults_groups_and_the_host_in_that_order(tmp_path):
    inv = load_inventory(write(tmp_path, WITH_HOOKS))
    one, two = inv.resolve("gpu-1,gpu-2")
    assert [(h.point, h.name, h.where) for h in one.hooks] == [
        ("before-switch", "disk-ok", "host"),
        ("failed", "page", "local"),
        ("before-switch", "warm-cache", "host"),
        ("after-switch", "announce", "local"),
    ]
    assert one.hooks[0].timeout == 60.0 and one.hooks[2].timeout == 30.0
    # gpu-2's own disk-ok replaces the defaults' one, in its place
    assert two.hooks[0] == Hook("before-switch", "disk-ok", "true")
    assert [h.name for h in two.hooks] == ["disk-ok", "page"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      after-switch:",
            "      after-deploy:",
            "line 10: hosts.gpu-1.hooks: Value error, unknown hook point 'after-deploy': use one of before-upload",
        ),
        (
            "          where: local\n  gpu-2",
            "          where: remote\n  gpu-2",
            "line 18: hosts.gpu-1.hooks.after-switch.0.where: Input should be 'host' or 'local'",
        ),
        (
            "          timeout: 30",
            "          timeout: 0",
            "line 14: hosts.gpu-1.hooks.before-switch.0.timeout: Input should be greater than 0",
        ),
        (
            "        - name: warm-cache\n",
            "        - name: warm cache\n",
            "hosts.gpu-1.hooks.before-switch.0.name: invalid hook name 'warm cache'",
        ),
        (
            "          run: curl -fsS http://127.0.0.1:9000/warm\n",
            "",
            "line 12: hosts.gpu-1.hooks.before-switch.0.run: Field required",
        ),
        (
            "          run: curl -fsS http://127.0.0.1:9000/warm\n",
            "          run: '  '\n",
            "hosts.gpu-1.hooks.before-switch.0.run: Value error, the hook's `run:` command is empty",
        ),
        (
            "      after-switch:\n        - name: announce",
            "        - name: warm-cache",
            "hooks.before-switch names warm-cache twice",
        ),
        ("groups:\n  prod:", "groups:\n  prd:", "groups.prd: no host is in group 'prd'"),
        (
            "      before-switch:\n        - name: warm",
            "      before-switch: curl\n      x:\n        - name: warm",
            "hosts.gpu-1.hooks: Value error, hooks.before-switch must be a list of hooks",
        ),
    ],
)
def test_malformed_hooks_name_the_field_and_the_fix(tmp_path, old, new, expected):
    assert old in WITH_HOOKS, old
    with pytest.raises(MoolaError) as err:
        load_inventory(write(tmp_path, WITH_HOOKS.replace(old, new, 1)))
    assert expected.replace("Value error, ", "") in str(err.value)


def test_the_undo_stack_unwinds_newest_first_and_keeps_what_it_could_not_undo():
    done: list[str] = []
    stack = UndoStack()
    stack.push("a", lambda info: done.append("a") or "a undone", left="A", fix="fix-a")
    stack.push("b", lambda info: done.append("b"), left="B", fix="fix-a", key="v1")
    stack.push("c", lambda info: done.append("c"), left="C", key="v2")
    assert not stack.drop("c", key="v1") and stack.drop("c", key="v2")
    assert stack.left() == ["B", "A"] and stack.fixes() == ["fix-a"]
    assert stack.unwind({}) == ["a undone"] and done == ["b", "a"] and not stack.entries

    def broken(info):
        raise OSError("host gone")

    stack.push("a", lambda info: done.append("a2"), left="A")
    stack.push("gone", broken, left="G", fix="fix-g")
    with pytest.raises(OSError):
        stack.unwind({})
    assert stack.left() == ["G", "A"] and stack.fixes() == ["fix-g"]  # named for the report


def test_the_shipped_inventory_gives_the_local_group_the_demos_hook():
    from moola_ops.demo.walk import ANNOUNCE

    inv = load_inventory(Path(__file__).parents[2] / "inventory" / "hosts.yaml")
    for name in inv.groups["local"]:
        assert inv.hosts[name].hooks == (Hook("after-switch", "announce", ANNOUNCE),)
