"""One host's plan, built step by step: its facts read once (read-only), then every command
the real run would send, in order, from the same builders (moola_ops.deploy.commands) the stages use.
The flows in `engine/plan.py` drive it."""

from __future__ import annotations

from typing import Any

from moola_ops.deploy.commands import compose, decisions
from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.deploy.commands.hostfacts import HostFacts
from moola_ops.deploy.results import HostOutcome, Options
from moola_ops.deploy.stages import bounded_check
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import Layout
from moola_ops.log import steps
from moola_ops.log.journal import current_actor
from moola_ops.transport import HostSession

UPLOAD = "sftp put {local} -> {host}:{remote}"  # the one step that is not a shell command
RUN_TIME_PORT = "<port>"  # a server's private port: the host picks a free one at run time
_SENTINEL_PORT = 65535  # built in with the builders' own checks, then shown as RUN_TIME_PORT


def _at_run_time(command: str) -> str:
    """`command` with the sentinel port (its last `--port`, after any inline program) shown as
    RUN_TIME_PORT."""
    head, sep, tail = command.rpartition(f"--port {_SENTINEL_PORT}")
    return f"{head}--port {RUN_TIME_PORT}{tail}" if sep else command


class Planner:
    """One host's plan: its facts (read-only) and the commands, in the order a run sends them."""

    def __init__(self, host: Host, opts: Options, deployment: str, what: str):
        self.host = host
        self.opts = opts
        self.deployment = deployment
        self.layout = Layout(host.workspace)
        self.commands: list[dict[str, str]] = []
        self.facts: HostFacts | None = None
        self.what = what
        self.serve_warm: dict[str, Any] | None = None  # the target's recorded warm standby
        self.serve_live: str | None = None  # the target whose server is live already
        self.serve_note: str | None = None  # which server would take traffic

    def add(self, step: str, command: str) -> None:
        self.commands.append({"step": step, "command": command})

    def read(self) -> HostFacts:
        """The deploy facts, read-only (the same fragments the lock step gathers, serve/state.json
        included)."""
        gather = facts_cmd.gather(self.layout, self.host.python)
        with HostSession(self.host, accept_new_host_key=False) as ssh:
            out = ssh.run(gather, timeout_s=self.opts.command_timeout_s)
        self.facts = facts_cmd.parse(out.stdout)
        holder = {
            "deployment": self.deployment,
            "actor": current_actor(),
            "what": self.what,
            "since": "<time of the run>",
            "pid": 0,
            "client": "<this machine>",
        }
        self.add(steps.LOCK, compose.combine(lock_cmd.acquire(self.layout, holder), gather))
        return self.facts

    def lock_state(self) -> str:
        lock = self.facts.lock
        if lock is None:
            return "free"
        stale = lock_cmd.stale_reason(lock.holder, lock.age_s, max_age_s=lock_cmd.MAX_AGE_S)
        who = lock_cmd.describe_holder(lock.holder)
        if stale:
            return f"STALE lock of {who} ({stale}): {lock_cmd.break_hint(self.host.name)}"
        return f"held by {who}: the run would be refused"

    def runtime_check(self, version: str, step: str, *, through_current: bool) -> None:
        o = self.opts
        command = bounded_check(
            self.layout,
            self.host,
            o,
            version,
            self.deployment,
            o.check_timeout_s,
            through_current=through_current,
        )
        self.add(step, command)

    def serving(self, target: str) -> None:
        """Before the switch, with serving on (moola_ops/serving/stages.py, prepare_target). The
        lock's facts carry serve/state.json (`server`): a recorded standby of the target costs
        nothing now (it is probed and given traffic in one command after the switch); without
        one, the proxy is ensured and a server started on a private port, then checked over
        HTTP. A port the host picks at run time is shown as RUN_TIME_PORT."""
        if not self.opts.serve:
            return
        from moola_ops.serving import commands as serve_cmd

        layout, host, facts = self.layout, self.host, self.facts
        known = "server" in facts.asked
        if known and serve_cmd.live_of(facts.server, target) is not None:
            self.serve_live = target
            self.serve_note = (
                f"the live server already serves {target}: it keeps the traffic (checked "
                "after the switch; a new server starts only if it is not ready)"
            )
            return
        standby = serve_cmd.standby_of(facts.server, target) if known else None
        if standby is not None:
            self.serve_warm = standby
            self.serve_note = (
                f"the warm standby of {target} (port {standby['port']}) is probed and given "
                "traffic in one command after the switch (a new server starts if it fails)"
            )
            return
        if not known:  # facts without serve/state.json: the run probes for a standby first
            self.add(steps.SERVE_STANDBY, serve_cmd.standby(layout, host.python, target))
        self.serve_note = f"a new server for {target} starts on a private port"
        self._start_server(target)

    def _start_server(self, target: str) -> None:
        """serving_stages.deploy_start: ensure the proxy, start the server, check it over HTTP."""
        from moola_ops.serving import commands as serve_cmd
        from moola_ops.serving import control as srv
        from moola_ops.serving import stages as stages_srv

        layout, host, o = self.layout, self.host, self.opts
        proxy = serve_cmd.proxy(
            layout,
            host.python,
            serve_cmd.public_port(host),
            host.serve_bind,
            keep_running=host.serve_port is None,
        )
        self.add(steps.SERVE_START, proxy)
        start = serve_cmd.start(layout, host.python, target, timeout_s=srv.READY_TIMEOUT_S)
        self.add(steps.SERVE_START, start)
        probe = serve_cmd.probe(
            layout,
            host.python,
            port=_SENTINEL_PORT,
            requests=o.check_runs or stages_srv.PROBE_REQUESTS,
            warmup=stages_srv.PROBE_WARMUP if o.check_warmup is None else o.check_warmup,
        )
        self.add(steps.SERVE_CHECK, _at_run_time(probe))

    def serve_switch(self, target: str) -> None:
        """Right after `current` moved (serving_stages.traffic_follows): live traffic moves to
        the server started before the switch, or the warm standby is probed and moved to in
        one command."""
        if not self.opts.serve:
            return
        from moola_ops.serving import commands as serve_cmd

        keep = self.opts.keep_standby
        if self.serve_live == target:  # serving_stages.keep_live: one status round trip
            self.add(steps.SERVE_SWITCH, serve_cmd.status(self.layout, self.host.python))
            return
        if self.serve_warm is not None:
            move = serve_cmd.standby_switch(
                self.layout, self.host.python, target, keep_standby=keep
            )
            self.add(steps.SERVE_STANDBY, move)
            return
        move = serve_cmd.switch(
            self.layout, self.host.python, target, port=_SENTINEL_PORT, keep_standby=keep
        )
        self.add(steps.SERVE_SWITCH, _at_run_time(move))

    def serve_post_check(self) -> None:
        """After the post-check: real requests through the public port (answered by target)."""
        if self.opts.serve:
            from moola_ops.serving import commands as serve_cmd

            probe = serve_cmd.probe(self.layout, self.host.python, port=0, requests=5)
            self.add(steps.SERVE_POST_CHECK, probe)

    def switch_checked(
        self,
        target: str,
        previous: str | None,
        action: str,
        *,
        snapshot: bool,
        runtime: bool,
        sha256: str | None,
    ) -> str | None:
        snap = None
        if snapshot and previous:
            snap = release_cmd.snapshot_name("TIME", previous)  # the run stamps the UTC time
        revision: dict[str, Any] = {
            "time": "<time of the switch>",
            "action": action,
            "version": target,
            "previous": previous,
            "deployment": self.deployment,
            "actor": current_actor(),
        }
        if sha256:
            revision["sha256"] = sha256
        self.add(
            steps.SWITCH,
            release_cmd.snapshot_and_switch(
                self.layout,
                target,
                self.deployment,
                revision,
                snapshot_of=previous if snap else None,
                snapshot_as=snap,
            ),
        )
        self.serve_switch(target)
        verify = release_cmd.verify(self.layout, self.host.python, target, through_current=True)
        self.add(
            steps.POST_CHECK, release_cmd.checked_with_smoke(verify, self.layout, self.host.smoke)
        )
        if runtime:
            self.runtime_check(target, steps.POST_CHECK_RUNTIME, through_current=True)
        self.serve_post_check()
        return snap

    def prune(self, after: HostFacts, protect: tuple[str, ...]) -> dict[str, list[str]]:
        releases, backups = decisions.plan_prune(
            after,
            keep_releases=self.opts.keep_releases,
            keep_backups=self.opts.keep_backups,
            protect=protect,
        )
        self.add(steps.PRUNE, facts_cmd.gather(self.layout, self.host.python))
        self.add(steps.PRUNE, release_cmd.prune(self.layout, releases, backups))
        return {
            "releases": releases,
            "backups": backups,
            "left_alone": decisions.odd_releases(after),
            "unchecked": decisions.unchecked_releases(after, protect),
        }

    def unlock(self) -> None:
        self.add(steps.UNLOCK, lock_cmd.release(self.layout, self.deployment))

    def outcome(self, current: str | None, target: str | None, summary: str, **plan: Any):
        """A `planned` outcome; `upload`, `snapshot`, `prune` default to none."""
        plan = {"upload": None, "snapshot": None, "prune": None, **plan}
        plan.update(
            current=current,
            target=target,
            lock=self.lock_state(),
            commands=self.commands,
            serving=self.serve_note,
            current_problem=self.facts.current_problem,
            summary=summary,
        )
        return HostOutcome(
            self.host.name, "planned", summary, current=current, previous=current, plan=plan
        )


def after_switch(facts: HostFacts, target: str, action: str, sha: str | None) -> HostFacts:
    """The facts as they would be after the switch (for the prune decision)."""
    after = HostFacts(**{**facts.__dict__})
    after.releases = {**facts.releases, target: sha or facts.releases.get(target)}
    after.revisions = [*facts.revisions, {"action": action, "version": target}]
    after.current = target
    return after
