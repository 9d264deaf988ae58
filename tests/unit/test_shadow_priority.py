"""A shadow server lowers itself before its first thread starts (serve.yield_to_live): every
thread it starts later runs at nice 19 under SCHED_IDLE, and torch computes on one thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, os, sys, threading
from moola_core.runtime.serve import yield_to_live
import torch

changed = yield_to_live(sys.argv[1])
seen = {}
def later():
    seen["policy"] = os.sched_getscheduler(0)
    seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
t = threading.Thread(target=later)
t.start(); t.join()
print(json.dumps({"changed": changed, "main_policy": os.sched_getscheduler(0),
                  "idle": os.SCHED_IDLE, "threads": torch.get_num_threads(), **seen}))
"""


def _probe(role: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, role], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_shadow_server_and_the_threads_it_starts_yield_the_cpu():
    got = _probe("shadow")
    assert got["changed"] is True
    assert got["main_policy"] == got["idle"] and got["policy"] == got["idle"]
    assert got["nice"] == 19
    assert got["threads"] == 1


def test_a_live_server_keeps_its_priority():
    got = _probe("live")
    assert got["changed"] is False
    assert got["policy"] != got["idle"]
    assert got["nice"] == os.getpriority(os.PRIO_PROCESS, 0)  # as its parent (this test)
