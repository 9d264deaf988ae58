"""Facts the engine reads before it changes a host: `agent.py facts python` (run without -S:
what the interpreter can import, its site-packages included, is the fact).

    {"python": "3.11.7", "torch": "2.13.0" | null}

torch's version is read from its version.py, found without importing torch (seconds) or
scanning every installed distribution (importlib.metadata costs ~70 ms: this runs in every
lock's round trip, which a rollback waits for); the package metadata is the fallback.
"""

import importlib.util
import json
import os
import re
import sys

_VERSION = re.compile(r"^__version__\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)", re.M)


def torch_version():
    """The torch version this interpreter would import, or None when there is none."""
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return None
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as fh:
            found = _VERSION.search(fh.read())
        if found:
            return found.group(1)
    except (OSError, TypeError):
        pass
    from importlib import metadata

    return metadata.version("torch")


def python():
    try:
        torch = torch_version()
    except Exception:
        torch = None
    return {"python": sys.version.split()[0], "torch": torch}


FACTS = {"python": python}


def main(argv):
    if len(argv) != 1 or argv[0] not in FACTS:
        print(json.dumps({"ok": False, "error": f"facts: choose one of {', '.join(FACTS)}"}))
        return 2
    print(json.dumps(FACTS[argv[0]]()))
    return 0
