"""The deployment log: what every run did, step by step, and the names it uses.

    Journal(phase, bundle=, path=)        one run's writer (record, step, transient_step)
    read_events(path) -> list[Event]      every line, across rotated files
    steps                                 the step registry: each step's name, phase, proof

Modules: `journal` (the event schema, ids, listeners, the writer), `logfile` (flock'd whole-line
appends, rotation, reads across rotated files), `steps` (every phase and step name, defined
once; the engine, the phases, the health checks and the checklist import them).
"""

from moola_ops.log import steps
from moola_ops.log.journal import Event, Journal, read_events
from moola_ops.log.logfile import JournalWriteError

__all__ = ["Event", "Journal", "JournalWriteError", "read_events", "steps"]
