"""Where this agent runs from, how it starts itself again, and removing agent folders no
process uses any more."""

import os
import shutil
import sys
import time


def root():
    """The folder that holds moola_core/ (the uploaded agent folder, or a release's code/)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launcher():
    """The argv prefix that runs this agent again (for the long-running processes it starts:
    the proxy, the supervisor), from the same folder."""
    here = root()
    uploaded = os.path.join(here, "agent.py")
    if os.path.isfile(uploaded):
        return [sys.executable, "-S", uploaded]
    return [sys.executable, "-S", os.path.join(here, "moola_core", "agent", "__main__.py")]


def _running_from(folder):
    """True when a process on this host runs code from `folder` (its command line names it)."""
    needle = os.path.realpath(folder).encode()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return True  # no /proc: assume in use, keep it
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if needle in fh.read():
                    return True
        except OSError:
            continue
    return False


def prune(agents_dir, keep):
    """Remove agent folders under `agents_dir` other than `keep` that no process runs from
    (an interrupted upload's temp folder included)."""
    removed, busy = [], []
    for name in sorted(os.listdir(agents_dir)):
        path = os.path.join(agents_dir, name)
        if name == keep or not os.path.isdir(path):
            continue
        if name.startswith(".install.") and time.time() - os.stat(path).st_mtime < 600:
            continue  # another session may be extracting into it right now
        if _running_from(path):
            busy.append(name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return {"ok": True, "removed": removed, "in_use": busy}
