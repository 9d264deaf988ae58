"""Moola's front door: `invoke --list` shows every task, `invoke -h TASK` its flags.

Each module in moola_ops/cli/ exports its tasks (and sub-collections) in `EXPORTS`; this file only
gathers them. No logic lives here, and nothing heavy is imported: torch and pandas load inside
the tasks that need them, so `invoke --list` and `invoke healthcheck` start fast.
"""

import importlib
import pkgutil

from invoke import Collection

import moola_ops.cli

ns = Collection()
for _info in sorted(pkgutil.iter_modules(moola_ops.cli.__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"moola_ops.cli.{_info.name}")
    for _item in getattr(_module, "EXPORTS", ()):
        if isinstance(_item, Collection):
            ns.add_collection(_item)
        else:
            ns.add_task(_item)
