"""The demo's last act (called once from moola_ops/demo/walk.py): shadow, A/B, decision,
monitoring, report.

With v0.1 live on the stand-in hosts, v0.2 runs as the shadow on the first host; the demo
sends windows whose outcomes it knows (a fresh synthetic labeled set neither model trained
on) through the host's public port, pulls the captures, runs the A/B with those outcomes and
acts on its one-sentence decision: promote v0.2 on every host through the normal deploy path,
or keep v0.1 and roll the shadow away. Then it monitors every host and writes the report, and
prints the page's path.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

N_WINDOWS = 240  # traffic with known outcomes
PER_REQUEST = 8  # windows per request


def send_windows(port: int, frame, per_request: int = PER_REQUEST, token: str | None = None) -> int:
    """POST the labeled frame's windows (with their window_id) to a serving port, with the
    host's client token when given; answered count."""
    import numpy as np

    from moola_ops.serving.control import bearer

    answered = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for lo in range(0, len(frame), per_request):
            part = frame.iloc[lo : lo + per_request]
            windows = [
                {
                    "id": str(row.window_id),
                    "ohlc": np.asarray(row.features.tolist(), dtype=float).reshape(-1, 4).tolist(),
                }
                for row in part.itertuples()
            ]
            conn.request(
                "POST",
                "/v1/predict",
                body=json.dumps({"windows": windows}),
                headers={
                    "Content-Type": "application/json",
                    "X-Moola-Request-Id": f"demo-{lo}",
                    **bearer(token),
                },
            )
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"the live server answered {response.status}: {data[:200]!r}")
            answered += len(windows)
    finally:
        conn.close()
    return answered


def shadow_ab_report(
    demo,
    *,
    hosts,
    root: Path,
    bundles_dir: Path,
    runs_dir: Path,
    say=print,
    live: str = "v0.1",
    candidate: str = "v0.2",
) -> Path:
    """Run the stages; returns the report's path (also in demo.facts["report"])."""
    from moola_core.data import labeled, synthetic
    from moola_ops.report import build_report
    from moola_ops.serving import control as serving
    from moola_ops.serving.captures import load_table
    from moola_ops.shadow import ab
    from moola_ops.shadow import control as shadow
    from moola_ops.transport import HostSession
    from moola_ops.watch import monitor

    cache = root / "captures"
    first = hosts[0]

    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise RuntimeError(message)

    with demo.stage(
        f"shadow {candidate} beside {live}",
        f"invoke shadow start --host {first.name} --candidate {candidate}",
    ) as st:
        for host in hosts:
            with HostSession(host) as session:
                serving.ensure(session, host)  # the hosts serve `current` (idempotent)
        now = shadow.start(first, candidate, fraction=1.0, bundles_dir=str(bundles_dir))
        expect(now.ready and now.live == live, f"shadow not ready beside {live}: {now.summary()}")
        st.detail = now.summary()

    with demo.stage(
        "traffic with known outcomes", "POST /v1/predict (a fresh synthetic set)"
    ) as st:
        frame = synthetic.make_labeled_set(n_windows=N_WINDOWS, seed=2026)
        frame["window_id"] = "live-" + frame["window_id"].astype(str)
        outcomes = labeled.write_labeled(frame, root / "data" / "outcomes.parquet")
        with HostSession(first) as session:
            port = serving.status(session, first).proxy_port
            token = serving.client_token(session, first)["token"]
        answered = send_windows(port, frame, token=token)
        expect(answered == len(frame), f"{answered} of {len(frame)} windows answered")
        st.detail = f"{answered} windows through port {port}; outcomes in {outcomes.name}"

    with demo.stage("A/B on live traffic", f"invoke ab --host {first.name} --outcomes FILE") as st:
        import time

        # the proxy copies after answering: wait until the shadow captured every window
        deadline = time.monotonic() + 120
        while True:
            result, _ = ab.run_ab(
                first.name,
                outcomes=str(outcomes),
                candidate=candidate,
                inventory=_Inventory(hosts),
                cache=cache,
                record_result=False,
            )
            complete = bool(result.outcomes) and result.outcomes["n"] >= len(frame)
            if complete or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ab.record(result, first.name)
        expect(result.outcomes is not None, "no pair met its outcome")
        for line in ab.render_text(result):
            say(f"   {line}")
        demo.facts["ab_decision"] = result.decision
        st.detail = result.sentence

    if result.decision == "promote":
        with demo.stage(f"promote {candidate}", "invoke promote --host H (each host)") as st:
            for host in hosts:
                done = shadow.promote(host, bundles_dir=str(bundles_dir), candidate=candidate)
                expect(done.ok, f"promote on {host.name}: {[o.message for o in done.outcomes]}")
            st.detail = f"{candidate} is live on {', '.join(h.name for h in hosts)}"
    else:
        with demo.stage(
            f"keep {live}, roll the shadow away", f"invoke shadow stop --host {first.name}"
        ) as st:
            after = shadow.stop(first)
            expect(after.release is None and after.live == live, after.summary())
            st.detail = after.summary()

    with demo.stage("monitor", "invoke monitor --host H") as st:
        lines = []
        for host in hosts:
            seen = monitor.run_monitor(
                host.name, since="", runs_dir=runs_dir, inventory=_Inventory(hosts), cache=cache
            )
            say(f"   {monitor.status_line(seen).split(' | ')[0]}")
            lines.append(f"{host.name} {monitor.STATE_NAMES[seen.state]}")
        expect(len(load_table(cache, first.name)) > 0, "no captures were pulled")
        st.detail = ", ".join(lines)

    with demo.stage("the report", "invoke report") as st:
        report = build_report(root / "report.html", runs_dir=runs_dir, cache=cache)
        expect(len(report.figures) >= 8, f"only {len(report.figures)} figures")
        demo.facts["report"] = str(report.path)
        st.detail = report.summary()
    say(f"\n   report: {report.path}")
    return report.path


class _Inventory:
    """The demo's hosts as the `inventory=` the task functions accept (resolve by name)."""

    def __init__(self, hosts):
        self.hosts = {h.name: h for h in hosts}

    def resolve(self, selection: str):
        return [self.hosts[name] for name in selection.split(",")]
