"""The shadow: a candidate release's server beside the live one, fed a copy of live traffic.

`start(host, candidate, fraction)`:
1. puts the candidate's bundle on the host when it is not there (the deploy's own upload and
   promote builders: staged, extracted, verified file by file), without touching `current`;
2. starts its model server on a private port with `--role shadow` (its captures are marked
   shadow; the server lowers itself to nice 19 under SCHED_IDLE before its first thread starts
   and computes on one torch thread), waits for /readyz (model loaded, golden parity passed)
   and puts every thread of it at nice 19 under SCHED_IDLE again (a server of an older
   runtime does not lower itself), so on a busy host it only gets CPU the live server leaves;
3. writes `"shadow": {"release", "port", "pid", "fraction"}` into WORKSPACE/serve/state.json
   (atomic rename): from the next request on, the front proxy copies that fraction of
   /v1/predict requests, with the same X-Moola-Request-Id, to the shadow *after* the live
   answer has gone out, on a bounded queue. The live answer never waits for the shadow, so a
   slow, failing or dead shadow cannot delay or change it (tests/integration/test_shadow.py).

`stop(host)` removes the key (the proxy stops copying at once) and drains the shadow's server.
`status(host)` says what the shadow is, whether its process runs and what the proxy counted.
`promote(host)` deploys the candidate through the normal zero-downtime path (engine.deploy,
then the proxy moves to a fresh live server of it) and stops the shadow.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.errors import MoolaError

DEFAULT_FRACTION = 1.0

# Runs on the host (python3, stdlib): set or clear the shadow key of serve/state.json with an
# atomic rename, exactly as the serving control program writes the file.
_STATE_EDIT = r"""
import json, os, sys, time
ws, action = os.path.expanduser(sys.argv[1]), sys.argv[2]
path = os.path.join(ws, "serve", "state.json")
try:
    with open(path) as fh:
        state = json.load(fh)
except (OSError, ValueError):
    state = None
if not isinstance(state, dict) or not state.get("live"):
    if action == "set":
        print(json.dumps({"ok": False, "error": "nothing is live on this host"}))
        sys.exit(1)
    print(json.dumps({"ok": True, "old": None, "shadow": None}))
    sys.exit(0)
old = state.get("shadow")
state["shadow"] = json.loads(sys.argv[3]) if action == "set" else None
state["v"], state["updated"] = 1, time.time()
tmp = "%s.tmp-%d" % (path, os.getpid())
with open(tmp, "w") as fh:
    json.dump(state, fh, sort_keys=True)
os.replace(tmp, path)
print(json.dumps({"ok": True, "old": old, "shadow": state["shadow"]}))
"""

# Runs on the host: every thread of the shadow's server to nice 19 and the SCHED_IDLE policy
# (Linux sets both per thread; threads started later inherit them from the thread that starts
# them), so on a busy host the shadow only gets CPU time the live server does not want.
_DEPRIORITISE = r"""
import json, os, sys
pid, nice = int(sys.argv[1]), int(sys.argv[2])
done = 0
try:
    tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
except OSError:
    tids = [pid]
idle = 0
for tid in tids:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        done += 1
    except OSError:
        pass
    try:  # SCHED_IDLE: runs only on CPU time no normal task wants (Linux; else nice alone)
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        idle += 1
    except (AttributeError, OSError):
        pass
print(json.dumps({"ok": done > 0, "threads": done, "sched_idle": idle}))
"""
SHADOW_NICE = 19
# The shadow batches like the live server (same --max-wait-ms): a longer window would save a
# little CPU but add its length to every latency the A/B compares against the SLA.
SHADOW_SERVER_ARGS = ("--role", "shadow")

# The proxy's counters (GET /_proxy/stats on its port), read on the host
_PROXY_STATS = r"""
import json, sys, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:%d/_proxy/state" % int(sys.argv[1]), timeout=5) as r:
        print(r.read().decode())
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


@dataclass
class ShadowStatus:
    """The shadow on one host."""

    host: str
    release: str | None = None
    port: int | None = None
    pid: int | None = None
    fraction: float | None = None
    running: bool = False  # its server process is alive
    ready: bool = False  # and answered /readyz just now
    live: str | None = None  # the release live traffic goes to
    proxy: dict[str, Any] = field(default_factory=dict)  # shadow_sent/errors/dropped counters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.release:
            return f"{self.host}: no shadow (live {self.live or 'nothing'})"
        state = "ready" if self.ready else "running" if self.running else "NOT RUNNING"
        counts = ", ".join(f"{k} {v}" for k, v in self.proxy.items() if k.startswith("shadow"))
        return (
            f"{self.host}: shadow {self.release} on port {self.port} ({state}), "
            f"{100 * (self.fraction or 0):g}% of live {self.live} requests copied"
            + (f"; proxy: {counts}" if counts else "")
        )


def _fraction(value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MoolaError(f"--sample {value!r} is not a number; give a fraction in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise MoolaError(f"--sample {value:g} is outside (0, 1]; 0.1 copies one request in ten")
    return value


def _edit_state(session, host, action: str, shadow: dict | None = None) -> dict:
    args = [shlex.quote(host.workspace), action]
    if shadow is not None:
        args.append(shlex.quote(json.dumps(shadow)))
    cmd = f"{shlex.quote(host.python)} -c {shlex.quote(_STATE_EDIT)} {' '.join(args)}"
    res = session.run(cmd, timeout_s=30)
    try:
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise MoolaError(f"{host.name} did not update its serving state: {res.tail()}") from None
    if not data.get("ok"):
        raise MoolaError(
            f"{host.name}: {data.get('error')}; start serving first (`invoke serve --host "
            f"{host.name} start`)"
        )
    return data


def stage_release(session, host, bundle, journal) -> str:
    """Put `bundle` under releases/ on the host (upload + verified extract), `current` untouched.
    Returns "present" or "uploaded"."""
    from moola_ops.commands import release as release_cmd
    from moola_ops.commands.layout import Layout

    layout = Layout(host.workspace)
    probe = session.run(f"test -f {layout.release(bundle.version)}/manifest.json", timeout_s=30)
    if probe.exit_code == 0:
        return "present"
    deployment = journal.deployment
    with journal.step(host.name, "upload", bytes=bundle.size):
        session.run(release_cmd.stage(layout, deployment), timeout_s=60)
        session.upload(bundle.path, release_cmd.staged_archive(layout, deployment))
    with journal.step(host.name, "promote", sha256=bundle.sha256) as info:
        out = session.run(
            release_cmd.promote(layout, host.python, deployment, bundle.version, bundle.sha256),
            timeout_s=600,
        )
        report = release_cmd.parse_hostside(out.stdout)
        info["report"] = report
        if out.exit_code != 0 or not report.get("ok"):
            session.run(release_cmd.remove_staging(layout, deployment), timeout_s=60)
            raise MoolaError(
                f"bundle {bundle.version} failed verification on {host.name}: "
                f"{'; '.join(report.get('problems', [])[:3]) or out.tail(200)}"
            )
    return "uploaded"


def status_on(session, host) -> ShadowStatus:
    """The shadow's state on an open session."""
    from moola_ops import serving
    from moola_ops.commands import serve as serve_cmd

    now = serving.status(session, host)
    if not now.ok:
        raise MoolaError(f"{host.name}: {now.error}")
    out = ShadowStatus(host.name, live=(now.live or {}).get("release"))
    shadow = now.shadow or {}
    if shadow:
        out.release, out.port = shadow.get("release"), shadow.get("port")
        out.pid, out.fraction = shadow.get("pid"), shadow.get("fraction")
        for s in now.servers:
            if s.get("pid") == out.pid and s.get("alive"):
                out.running, out.ready = True, bool(s.get("ready_now"))
    if now.proxy_running:
        port = now.proxy_port or serve_cmd.public_port(host)
        res = session.run(
            f"{shlex.quote(host.python)} -c {shlex.quote(_PROXY_STATS)} {int(port)}", timeout_s=30
        )
        try:
            stats = json.loads(res.stdout.strip().splitlines()[-1])
            counters = stats.get("stats", stats)
            out.proxy = {k: v for k, v in counters.items() if str(k).startswith("shadow")}
        except (ValueError, IndexError, AttributeError):
            pass
    return out


def start(
    host,
    candidate: str,
    *,
    fraction: float = DEFAULT_FRACTION,
    bundles_dir: str = "bundles",
    device: str = "auto",
    session=None,
    journal_path: str | None = None,
) -> ShadowStatus:
    """Start `candidate` as the host's shadow (replacing a previous shadow, which drains)."""
    from moola_ops import serving
    from moola_ops.engine import resolve_bundle
    from moola_ops.journal import Journal
    from moola_ops.transport import HostSession

    fraction = _fraction(fraction)
    bundle = resolve_bundle(candidate, bundles_dir=bundles_dir)
    journal = Journal("shadow", bundle=bundle.version, path=journal_path)
    own = session is None
    session = session or HostSession(host).open()
    try:
        before = status_on(session, host)
        if not before.live:
            raise MoolaError(
                f"nothing is live on {host.name}; deploy and serve a release first "
                f"(`invoke serve --host {host.name} start`)"
            )
        if before.live == bundle.version:
            raise MoolaError(
                f"{bundle.version} is the live release on {host.name}; a shadow must be another "
                "release"
            )
        with journal.step(host.name, "stage") as info:
            info["result"] = stage_release(session, host, bundle, journal)
        with journal.step(host.name, "start") as info:
            started = serving.start_candidate(
                session, host, bundle.version, device=device, server_args=SHADOW_SERVER_ARGS
            )
            info.update(pid=started.pid, port=started.port, start_s=started.start_s)
            if not started.ok:
                raise MoolaError(
                    f"the shadow server of {bundle.version} on {host.name} did not get ready "
                    f"({started.reason}); live traffic is untouched. Log: {started.log}"
                )
        with journal.step(host.name, "deprioritise", nice=SHADOW_NICE) as info:
            res = session.run(
                f"{shlex.quote(host.python)} -c {shlex.quote(_DEPRIORITISE)} "
                f"{int(started.pid)} {SHADOW_NICE}",
                timeout_s=30,
            )
            info["threads"] = res.stdout.strip()[-80:]
        with journal.step(host.name, "route", fraction=fraction) as info:
            shadow = {
                "release": bundle.version,
                "port": started.port,
                "pid": started.pid,
                "fraction": fraction,
                "since": time.time(),
            }
            old = _edit_state(session, host, "set", shadow).get("old")
            info["replaced"] = old
        if old and old.get("pid") and old.get("pid") != started.pid:
            serving.drain(session, host, int(old["pid"]))
        return status_on(session, host)
    finally:
        if own:
            session.close()


def stop(host, *, session=None, journal_path: str | None = None) -> ShadowStatus:
    """Stop copying traffic (at once) and drain the shadow's server. Idempotent."""
    from moola_ops import serving
    from moola_ops.journal import Journal
    from moola_ops.transport import HostSession

    own = session is None
    session = session or HostSession(host).open()
    try:
        before = status_on(session, host)
        if not before.release:
            return before
        journal = Journal("shadow", bundle=before.release, path=journal_path)
        with journal.step(host.name, "stop", port=before.port) as info:
            _edit_state(session, host, "clear")
            if before.pid and before.running:
                info["drained"] = serving.drain(session, host, int(before.pid))
        return status_on(session, host)
    finally:
        if own:
            session.close()


def status(host) -> ShadowStatus:
    from moola_ops.transport import HostSession

    with HostSession(host) as session:
        return status_on(session, host)


def promote(
    host,
    *,
    bundles_dir: str = "bundles",
    candidate: str | None = None,
    journal_path: str | None = None,
    plan: bool = False,
):
    """Deploy the shadow's release through the normal path, serve it, then stop the shadow.

    engine.deploy moves `current` (lock, verify, runtime check, switch, post-check); then a
    fresh live server of the candidate gets ready and the proxy moves to it (zero downtime);
    the shadow process, which captured as `shadow`, is drained. Returns the engine's result
    (`plan`: the deploy's plan, read from the host; nothing changes, the shadow keeps running).
    """
    from moola_ops import engine, serving
    from moola_ops.transport import HostSession

    if candidate is None:
        now = status(host)
        if not now.release:
            raise MoolaError(
                f"{host.name} has no shadow to promote; give --candidate VERSION or start one "
                "with `invoke shadow start`"
            )
        candidate = now.release
    bundle = engine.resolve_bundle(candidate, bundles_dir=bundles_dir)
    result = engine.deploy([host], bundle, engine.Options(journal_path=journal_path, plan=plan))
    if plan or not result.ok:
        return result
    with HostSession(host) as session:
        served = serving.status(session, host)
        if served.served_release != bundle.version:  # the engine did not move traffic itself
            serving.restart(session, host)
        stop(host, session=session, journal_path=journal_path)
    return result
