"""`invoke demo`: the whole checklist, end to end, on two local stand-in hosts. No RunPod needed.

synthetic market -> train -> preflight -> select -> bundle v0.1 -> deploy to local-1, local-2
-> verify -> accept -> bundle v0.2 -> deploy -> rollback to v0.1 -> healthcheck -> checklist
and log shown. Every stage checks its outcome (not just that it ran); the task exits 0 only if
every stage did what it should.

Everything the demo makes lives under one folder (default .moola/demo, git-ignored) with its own
deployment log, so it never touches your runs/, bundles/, logs/ or hosts; the stand-in hosts it
starts are stopped at the end unless --keep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from moola_ops.demo import DEMO_ROOT
from moola_ops.log import steps
from moola_ops.serving.traffic import demo_traffic
from moola_ops.terminal import console, is_tty

DEMO_HOSTS = ("local-1", "local-2")
# A user hook (docs/runbook.md "Hooks"), the one inventory/hosts.yaml gives the `local` group:
# after each checked switch, the host records it in deploys.txt in its workspace.
ANNOUNCE = 'echo "$MOOLA_PHASE ${MOOLA_PREVIOUS:-nothing} -> $MOOLA_VERSION" >> deploys.txt'
# The stand-in hosts are CPU processes sharing this machine with the demo itself: a generous
# latency SLA keeps the demo about the checklist, not about this laptop's load (at load 8 on two
# cores, with the demo's own request stream running, the HTTP check's p99 reached 230 ms). A
# real GPU host uses the bundle's default SLA (5 ms p99) or the inventory's latency_sla_ms.
DEMO_SLA_P99_MS = 1000.0
# The demo's model must pass phase 2's quality gate honestly: the default live recipe
# (configs/jade.yaml), judged out of fold on the default protocol's 174 windows against the
# heuristic and the linear baseline, and on a synthetic stream for false alarms. To stay within
# the demo's time it trains a lighter copy (3 folds instead of 5, one LSTM layer, one cut per
# window and epoch, fewer
# epochs, a 20-session stream); two seeds of it are the two candidates (v0.1 and v0.2).
DEMO_WINDOWS = 174
DEMO_DATA_SEED = 7
DEMO_SEEDS = (17, 13)
DEMO_RECIPE = {
    "data": {"source": "synthetic", "n_windows": DEMO_WINDOWS, "data_seed": DEMO_DATA_SEED},
    "split": {"folds": 3},
    "live": {"cuts_per_window": 1},
    "model": {"layers": 1},
    "optim": {"max_epochs": 30, "patience": 6},
    "stream": {"sessions": 20},
}


class DemoFailed(Exception):
    """A stage did not do what it should; the message says what was expected and found."""


@dataclass
class Stage:
    """One stage of the demo: what ran, whether its outcome was right, how long it took."""

    name: str
    command: str
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoRun:
    """The demo's progress: stages so far and the facts later stages need."""

    root: Path
    stages: list[Stage] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    error: str | None = None  # the first stage that went wrong, and how

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.stages) and all(s.ok for s in self.stages)

    @contextlib.contextmanager
    def stage(self, name: str, command: str):
        """Time a stage; print it; a DemoFailed or any error inside marks it failed and stops."""
        stage = Stage(name, command)
        self.stages.append(stage)
        say(f"\n== {len(self.stages):>2}. {name}   ({command})", bold=True)
        started = time.monotonic()
        try:
            # each step of the engine and the phases as it happens (live on a terminal)
            with _stage_progress(name):
                yield stage
            stage.ok = True
        except Exception as exc:
            stage.detail = " ".join(str(exc).split()) or type(exc).__name__
            raise DemoFailed(f"{name}: {stage.detail}") from exc
        finally:
            stage.seconds = round(time.monotonic() - started, 1)
            mark = "ok" if stage.ok else "FAILED"
            say(
                f"   -> {mark} in {stage.seconds:.1f} s"
                + (f": {stage.detail}" if stage.detail else "")
            )


def _stage_progress(name: str):
    import sys

    from moola_ops.progress import live_terminal, show

    # off a terminal the step lines join the stage lines on stdout, in order
    return show(name, stream=None if live_terminal() else sys.stdout)


def say(text: str, bold: bool = False) -> None:
    if is_tty():
        console().print(text, style="bold" if bold else None, markup=False, highlight=False)
    else:
        print(text, flush=True)


def expect(condition: bool, message: str) -> None:
    """Fail the current stage with `message` unless `condition` holds."""
    if not condition:
        raise DemoFailed(message)


def run_demo(root: str | os.PathLike = DEMO_ROOT, *, keep: bool = False) -> DemoRun:
    """Run every stage in order, stopping at the first one whose outcome is wrong.

    Returns the run; `run.ok` is True only when every stage did what it should.
    """
    import yaml

    root = Path(root).absolute()
    if root.exists():
        _stop_demo_hosts(root)
        shutil.rmtree(root)  # a fresh start: bundle versions and releases are immutable
    root.mkdir(parents=True)
    os.environ["MOOLA_LOG"] = str(root / "deployments.jsonl")  # the demo's own log
    demo = DemoRun(root)
    try:
        _stages(demo, yaml)
    except DemoFailed as exc:
        demo.error = str(exc)
    finally:
        if not keep:
            _stop_demo_hosts(root)
    return demo


def _stop_demo_hosts(root: Path) -> None:
    from moola_ops.hosts.standin import stop_sandbox

    stop_sandbox(root / "sandbox")


def _stages(demo: DemoRun, yaml) -> None:
    from moola_ops import deploy as engine
    from moola_ops.checklist import phases
    from moola_ops.checklist.spec import load_checklist
    from moola_ops.checklist.states import checklist_states
    from moola_ops.hosts.inventory import Hook, Inventory
    from moola_ops.hosts.standin import start_sandbox
    from moola_ops.log.journal import Journal, read_events
    from moola_ops.watch.health import OK, STATE_NAMES
    from moola_ops.watch.health_output import status_line
    from moola_ops.watch.health_run import run_healthcheck

    root = demo.root
    runs_dir, bundles_dir = root / "runs", root / "bundles"

    with demo.stage("start two stand-in hosts", "invoke sandbox up --hosts 2") as st:
        sandbox = start_sandbox(root / "sandbox", list(DEMO_HOSTS))
        expect(all(h.alive() for h in sandbox.hosts.values()), "an sshd did not stay up")
        announce = Hook(steps.POINT_AFTER_SWITCH, "announce", ANNOUNCE)
        inventory = Inventory.from_sandbox(sandbox, groups=("local",), hooks=(announce,))
        hosts = inventory.resolve("local")
        st.detail = ", ".join(f"{h.name} on 127.0.0.1:{h.port}" for h in hosts)

    with demo.stage("synthetic market -> labeled set", "invoke data.market") as st:
        from moola_core.data import labeled, synthetic
        from moola_core.data.problems import errors_only

        frame = synthetic.make_labeled_set(n_windows=DEMO_WINDOWS, seed=DEMO_DATA_SEED)
        path = labeled.write_labeled(frame, root / "data" / "labeled.parquet")
        problems = errors_only(labeled.validate_labeled(labeled.read_labeled(path)))
        expect(len(frame) == DEMO_WINDOWS and not problems, f"labeled set invalid: {problems[:3]}")
        counts = frame["label"].value_counts().to_dict()
        # training reads the same windows from the generator, which also has the bars before
        # each window: the as-of cuts a live model learns from start there
        st.detail = f"{DEMO_WINDOWS} windows ({counts}) -> {path.relative_to(root)}"

    config_paths = []
    with demo.stage(
        f"train the default recipe, seeds {', '.join(map(str, DEMO_SEEDS))}",
        "invoke train --config C --seed 17,13",
    ) as st:
        from moola_core.train import train_run
        from moola_core.train.config import load_config
        from moola_core.train.data import prepare_data

        raw = yaml.safe_load(Path("configs/jade.yaml").read_text())
        for section, values in DEMO_RECIPE.items():
            raw[section].update(values)
        config_path = root / "train.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        config_paths.append(config_path)
        base = load_config(str(config_path))
        prepared = prepare_data(base)  # both seeds share the windows, folds, cuts and stream
        run_ids = []
        for seed in DEMO_SEEDS:
            result = train_run(
                base.model_copy(update={"seed": seed}),
                runs_dir,
                progress="none",
                n_boot=200,
                data=prepared,
            )
            expect((result.path / "weights.pt").is_file(), f"{result.run_id} wrote no weights")
            m = result.metrics
            iou = m["oof"]["span_iou"]["value"]
            linear = m["baselines"]["linear"]["oof"]["span_iou"]["value"]
            fa = m["stream"]["model"]["false_alarms_per_1k"]["value"]
            fa_h = m["stream"]["baselines"]["heuristic"]["false_alarms_per_1k"]["value"]
            say(
                f"   {result.run_id}: out-of-fold span IoU {iou:.3f} (linear baseline "
                f"{linear:.3f}); stream false alarms per 1,000 bars {fa:.1f} (heuristic {fa_h:.1f})"
            )
            run_ids.append(result.run_id)
        demo.facts["run_ids"] = run_ids
        demo.facts["recipe"] = str(config_path)  # the label loop retrains the same recipe
        st.detail = ", ".join(run_ids)

    with demo.stage("phase 1: preflight", "invoke preflight") as st:
        report = phases.run_preflight(
            config_path=str(config_paths[0]),
            runs_dir=runs_dir,
            tests="tests/unit/test_checklist.py",
        )
        for s in report.steps:
            say(f"   {s.status:<7} {s.step:<7} {s.summary}")
        failed = [s.step for s in report.steps if s.status == "failed"]
        expect(report.ok, f"preflight steps failed: {failed}")
        st.detail = "lint, tests, data, model, doctor passed"

    with demo.stage("phase 2: select a candidate + quality gate", "invoke select") as st:
        report = phases.run_select(runs_dir=runs_dir, n_boot=1000)
        choice = report.facts["selection"]
        expect(
            choice.get("run_id") in demo.facts["run_ids"],
            f"selection did not pick a trained run: {report.steps[0].summary}",
        )
        say(f"   {choice.get('reason', '')}")
        # the gate must really pass (no override): the demo ships only a model that beats the
        # heuristic and the linear baseline out of fold, without more stream false alarms
        gate = choice.get("gate") or {}
        expect(
            report.ok and gate.get("passed") is True and not gate.get("override"),
            f"the quality gate did not pass: {report.steps[-1].summary}",
        )
        demo.facts["selected"] = choice["run_id"]
        st.detail = (
            f"{choice['run_id']} (variant {choice['variant']}, out-of-fold {choice['metric']} "
            f"{choice['value']}); quality gate passed"
        )

    def build(version: str, run_id: str, override: str = "") -> engine.LocalBundle:
        from moola_core.bundle.build import build_bundle
        from moola_core.bundle.verify import verify_bundle

        built = build_bundle(
            version, run_id, runs_dir=runs_dir, out_dir=bundles_dir, sla_p99_ms=DEMO_SLA_P99_MS
        )
        verify_bundle(built.path)
        # the same log line `invoke bundle` writes (phase 3 of the checklist)
        Journal(steps.BUNDLE, bundle=version).record(
            "",
            steps.BUNDLE_BUILD,
            "ok",
            run_id=run_id,
            path=str(built.path),
            sha256=built.sha256,
            summary=f"{built.path.name} from {run_id}, verified",
            **({"override": override} if override else {}),
        )
        return engine.resolve_bundle(version, bundles_dir=bundles_dir)

    def announced(expected: str) -> str:
        """The last line the after-switch hook wrote on each host (the same on all)."""
        lines = {(Path(h.workspace) / "deploys.txt").read_text().splitlines()[-1] for h in hosts}
        expect(lines == {expected}, f"the after-switch hook wrote {lines}, not {expected!r}")
        say(f"   hook:after-switch:announce wrote on each host: {expected}")
        return expected

    def current_on_hosts() -> dict[str, str | None]:
        checks = [engine.verify_current(h) for h in hosts]
        return {c.host: (c.version if c.ok else None) for c in checks}

    def gate_of(bundle) -> None:
        # what deploy's quality-gate step asks of a bundle (moola_core.bundle.gate)
        from moola_core.bundle.gate import gate_allows
        from moola_core.bundle.verify import verify_bundle

        allowed, why = gate_allows(verify_bundle(bundle.path).manifest)
        expect(allowed, f"{bundle.path.name} would be refused by deploy: {why}")

    with demo.stage("phase 3: bundle v0.1", "invoke bundle --version v0.1") as st:
        v01 = build("v0.1", demo.facts["selected"])
        gate_of(v01)
        st.detail = f"{v01.path.name}, {v01.size / 1e6:.2f} MB, sha256 {v01.sha256[:12]}"

    with demo.stage("phase 4: deploy v0.1", "invoke deploy --host local --bundle v0.1") as st:
        result = engine.deploy(hosts, v01)
        for o in result.outcomes:
            say(f"   {o.host}: {o.status} {o.message}")
        expect(
            result.ok,
            "deploy failed on " + ", ".join(o.host for o in result.outcomes if o.status != "ok"),
        )
        live = current_on_hosts()
        expect(set(live.values()) == {"v0.1"}, f"current after deploy: {live}")
        announced("deploy nothing -> v0.1")
        demo.facts["deploy_v01"] = result.deployment
        st.detail = f"deployment {result.deployment}; current = v0.1 on both, verified"

    with demo.stage(
        "phase 6 gate: accept before verify is refused", "invoke accept --deployment ID --by demo"
    ) as st:
        from moola_core.errors import MoolaError

        try:
            phases.run_accept(demo.facts["deploy_v01"], "demo")
        except MoolaError as exc:
            st.detail = f"refused as it should be: {str(exc)[:120]}..."
        else:
            raise DemoFailed("accept went through although phase 5 had not run")

    with demo.stage("phase 5: verify on the hosts", "invoke verify --host local") as st:
        report = phases.run_verify("local", inventory=inventory, timeout_s=240)
        for s in report.steps:
            say(f"   {s.status:<7} {s.step:<16} {s.summary}")
        expect(
            report.ok,
            "verify failed: " + "; ".join(s.summary for s in report.steps if s.status != "ok"),
        )
        st.detail = "sanity and latency passed on both hosts"

    with demo.stage("phase 6: accept v0.1", "invoke accept --deployment ID --by demo") as st:
        report = phases.run_accept(
            demo.facts["deploy_v01"], "demo", "demo release: synthetic data, small model"
        )
        expect(report.ok, "accept failed")
        st.detail = f"signed off by demo for deployment {demo.facts['deploy_v01']}"

    traffic = demo_traffic(hosts)  # real requests through deploy and rollback
    with demo.stage("bundle v0.2 and deploy it", "invoke bundle ... && invoke deploy ...") as st:
        other = next(r for r in demo.facts["run_ids"] if r != demo.facts["selected"])
        # not the selected run: `invoke bundle --run ID --override REASON` records why
        v02 = build("v0.2", other, override="demo: the other candidate, to show a rollback")
        gate_of(v02)  # the other seed of the same variant: the same verdict, passed
        result = engine.deploy(hosts, v02)
        expect(result.ok, f"deploy of v0.2 failed: {[o.message for o in result.outcomes]}")
        live = current_on_hosts()
        expect(set(live.values()) == {"v0.2"}, f"current after deploy: {live}")
        # the cron checks see v0.2 while it is live (phase 8 of its checklist)
        for deep in (False, True):
            run = run_healthcheck("local", deep=deep, timeout_s=240, inventory=inventory)
            expect(run.state == OK, f"health check of v0.2: {status_line(run)}")
        demo.facts["deploy_v02"] = result.deployment
        st.detail = f"deployment {result.deployment}; current = v0.2 on both (from {other})"

    with demo.stage("phase 7: roll back to v0.1", "invoke rollback --host local --to v0.1") as st:
        started = time.monotonic()
        result = engine.rollback(hosts, to="v0.1")
        seconds = time.monotonic() - started
        for o in result.outcomes:
            say(f"   {o.host}: {o.status} {o.message}")
        expect(result.ok, f"rollback failed: {[o.message for o in result.outcomes]}")
        live = current_on_hosts()
        expect(set(live.values()) == {"v0.1"}, f"current after rollback: {live}")
        announced("rollback v0.2 -> v0.1")
        sent = traffic.stop()
        say(
            f"   requests during deploy and rollback: {sent['requests']}, failed {sent['failed']}"
            f", longest gap {sent['longest_gap_ms']} ms"
        )
        expect(sent["failed"] == 0, f"{sent['failed']} requests failed: {sent['failures']}")
        st.detail = f"v0.1 serves again on both, checked ({seconds:.1f} s); 0 failed requests"

    with demo.stage(
        "phase 8: health checks", "invoke healthcheck && invoke healthcheck --deep"
    ) as st:
        for deep in (False, True):
            run = run_healthcheck("local", deep=deep, timeout_s=240, inventory=inventory)
            say(f"   {status_line(run)}")
            expect(run.state == OK, f"health check {STATE_NAMES[run.state]}: {status_line(run)}")
            expect(all(h.release == "v0.1" for h in run.hosts), "a host does not serve v0.1")
        st.detail = "fast and deep checks OK on both hosts"

    with demo.stage("the checklist and the log", "invoke checklist --deployment ID") as st:
        from moola_ops.checklist.view import render_checklist

        spec = load_checklist()
        events = read_events()
        first = checklist_states(spec, events, demo.facts["deploy_v01"])
        render_checklist(first, spec)
        phases_v01 = first.phase_states()
        expect(
            all(phases_v01[n] == "done" for n in range(1, 7)),
            f"v0.1 checklist phases 1-6 not all done: {phases_v01}",
        )
        second = checklist_states(spec, events, demo.facts["deploy_v02"])
        render_checklist(second, spec)
        phases_v02 = second.phase_states()
        expect(
            all(phases_v02[n] == "done" for n in (3, 4, 7, 8)),
            f"v0.2 checklist phases 3, 4, 7, 8 not all done: {phases_v02}",
        )
        say(f"\n   deployment log: {len(events)} lines in {os.environ['MOOLA_LOG']}; the last:")
        for e in events[-8:]:
            say(
                f"   {e['time'][11:23]} {e['phase']:<11} {e['step']:<18} {e['host'] or '-':<8} "
                f"{e['status']}"
            )
        st.detail = "v0.1: phases 1-6 done; v0.2: deployed, rolled back, monitored"

    from moola_ops.demo.shadow_ab import shadow_ab_report  # shadow, A/B, decision, monitor, report

    shadow_ab_report(
        demo, hosts=hosts, root=root, bundles_dir=bundles_dir, runs_dir=runs_dir, say=say
    )
    from moola_ops.demo.label_loop import review_loop  # Label Studio, review, import, retrain

    review_loop(demo, hosts=hosts, root=root, runs_dir=runs_dir, say=say)
