"""Serving on a host: the model server and the proxy in front of it, and what they captured.

    status(session, host) -> ServeStatus   which release serves, on which port, standby, shadow
    run(hosts, action) -> [ServeOutcome]   `invoke serve` (status, ensure, restart, stop)
    stages                                 what deploy and rollback attach at their hook points:
                                           a ready server before the switch, traffic following
                                           `current`, traffic back on a failed check
    pull_captures / load_table             the captured answers, copied and read locally

Modules: `commands` (pure builders of every serving command), `control` (operations over an
open HostSession), `stages` (the deploy engine's serving stages), `captures` (the capture
format, parsing, the local cache) and `captures_pull` (incremental copies over SFTP),
`traffic` (the demo's steady requests). docs/serving.md is the user's page.
"""

from moola_ops.serving.captures import CaptureTable, load_table
from moola_ops.serving.captures_pull import PullResult, pull_captures, pull_host
from moola_ops.serving.commands import ServeStatus
from moola_ops.serving.control import ServeError, ServeOutcome, run, status

__all__ = [
    "CaptureTable",
    "PullResult",
    "ServeError",
    "ServeOutcome",
    "ServeStatus",
    "load_table",
    "pull_captures",
    "pull_host",
    "run",
    "status",
]
