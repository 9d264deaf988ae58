"""The host agent's launcher: `python3 -S WORKSPACE/.moola/agent/<hash>/agent.py ACTION ...`
(this file, uploaded under that name), `python3 -S .../code/moola_core/agent/__main__.py ACTION
...` from a release, or `python -m moola_core.agent ACTION ...`. It parses on Python 3.6+ so an
old interpreter gets one JSON line that says why, not a SyntaxError.
"""

import json
import os
import sys

FLOOR = (3, 10)

if sys.version_info < FLOOR:
    print(
        json.dumps(
            {
                "ok": False,
                "python": sys.version.split()[0],
                "error": f"the Moola agent needs Python {FLOOR[0]}.{FLOOR[1]} or newer on the host, found {sys.version.split()[0]}",
            }
        )
    )
    sys.exit(2)

if not __package__:  # run as a file: put the folder that holds moola_core/ first on the path
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
        del sys.path[0]  # this file's own folder: its http.py would pass for the standard library's
    _root = (
        _here
        if os.path.isdir(os.path.join(_here, "moola_core"))
        else os.path.dirname(os.path.dirname(_here))
    )
    sys.path.insert(0, _root)

from moola_core.agent.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
