"""The agent's actions: `agent.py ACTION [SUB-ACTION] ARGS...`, one JSON document on stdout.

    release promote|verify|restore ...   releases/ (release.py)
    serve ACTION --workspace WS ...      model servers, proxy, supervisor, state.json (control.py)
    proxy --workspace WS --port P ...    the front proxy itself, a long-running process (proxy.py)
    facts python                         the interpreter and torch version (facts.py)
    captures list ROOT KNOWN_JSON        captured request files and their sizes (captures.py)
    prune AGENTS_DIR                     remove other agent folders no process runs from

Exit codes: 0 ok, 1 the action failed, 2 bad input (an unknown action included).
"""

import json
import os

from moola_core.agent import home

ACTIONS = ("release", "serve", "proxy", "facts", "captures", "prune")


def _usage(message):
    print(json.dumps({"ok": False, "error": message, "actions": list(ACTIONS)}))
    return 2


def main(argv):
    if not argv or argv[0] not in ACTIONS:
        got = argv[0] if argv else "nothing"
        return _usage(f"unknown action {got!r}: choose one of {', '.join(ACTIONS)}")
    action, args = argv[0], argv[1:]
    if action == "release":
        from moola_core.agent import release

        return release.main(args)
    if action == "serve":
        from moola_core.agent import control

        return control.main(args)
    if action == "proxy":
        from moola_core.agent import proxy

        return proxy.main(args)
    if action == "facts":
        from moola_core.agent import facts

        return facts.main(args)
    if action == "captures":
        from moola_core.agent import captures

        return captures.main(args)
    if len(args) != 1:
        return _usage("prune takes the agents folder")
    folder = os.path.abspath(os.path.expanduser(args[0]))
    keep = os.path.basename(home.root())
    print(json.dumps(home.prune(folder, keep), sort_keys=True))
    return 0
