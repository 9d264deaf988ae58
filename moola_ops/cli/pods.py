"""`invoke pods`: the RunPod account's pods, and stop / resume / terminate / known-host.

Thin tasks over moola_ops/hosts/runpod/ (a standard-library client of RunPod's GraphQL API). The
API key comes from RUNPOD_API_KEY or the file named by `runpod_api_key_file:` in the
inventory's defaults and is never printed. Changing a pod asks for confirmation: `--yes ID`
naming the pod, or typing its id on a terminal; terminate takes `--yes ID` only.
"""

from __future__ import annotations

import sys

from invoke import Collection
from invoke.exceptions import Exit

from moola_ops.cli._common import READS, task, user_errors
from moola_ops.log import steps
from moola_ops.terminal import console, is_tty, print_json

INVENTORY_HELP = "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)"
POD_HELP = "the pod's id (as `invoke pods` shows it)"
YES_HELP = "the pod's id again: confirms without asking (needed off a terminal)"


def _inventory(path: str):
    """The inventory, or None when no file was named and the default one does not exist."""
    import os
    from pathlib import Path

    from moola_ops.hosts.inventory import DEFAULT_PATH, load_inventory

    if not path and not os.environ.get("MOOLA_INVENTORY") and not Path(DEFAULT_PATH).exists():
        return None
    return load_inventory(path or None)


def _client(inventory):
    from moola_ops.hosts import runpod

    return runpod.Client(runpod.api_key(inventory.runpod_api_key_file if inventory else None))


def _hosts_of(inventory) -> dict[str, list[str]]:
    """{pod id: [inventory host names that name it]}."""
    out: dict[str, list[str]] = {}
    for host in inventory.hosts.values() if inventory else ():
        if host.runpod_pod_id:
            out.setdefault(host.runpod_pod_id, []).append(host.name)
    return out


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _gpu(pod) -> str:
    if not pod.gpu_count:
        return "none"
    return f"{pod.gpu_count} x {pod.gpu_name or '?'}"


def _cost(pod) -> str:
    return "-" if pod.cost_per_hr is None else f"${pod.cost_per_hr:.2f}/h"


@task(
    name="list",
    default=True,
    help={"json": "print one JSON document", "inventory": INVENTORY_HELP},
    dry=READS,
)
@user_errors
def list_(c, json=False, inventory=""):
    """The account's pods: status, GPU, cost, uptime, SSH endpoint, the inventory hosts naming them."""
    from moola_ops.hosts import runpod

    inv = _inventory(inventory)
    client = _client(inv)
    pods = runpod.fetch_all(client)
    named = _hosts_of(inv)
    missing = {pid: hosts for pid, hosts in named.items() if pid not in {p.id for p in pods}}
    if json:
        rows = [dict(p.to_dict(), hosts=named.get(p.id, [])) for p in pods]
        print_json({"pods": rows, "inventory_pods_not_found": missing})
        return
    if is_tty():
        from rich.table import Table

        table = Table("id", "name", "status", "gpu", "cost", "uptime", "ssh", "hosts")
        for p in pods:
            colour = "green" if p.desired_status == "RUNNING" else "yellow"
            table.add_row(
                p.id,
                p.name,
                f"[{colour}]{p.desired_status}[/]",
                _gpu(p),
                _cost(p),
                _uptime(p.uptime_s),
                p.ssh_text(),
                ", ".join(named.get(p.id, [])) or "-",
            )
        console().print(table)
    else:
        if pods:
            print("id\tname\tstatus\tgpu\tcost\tuptime\tssh\thosts")
        for p in pods:
            hosts = ",".join(named.get(p.id, [])) or "-"
            print(
                f"{p.id}\t{p.name}\t{p.desired_status}\t{_gpu(p)}\t{_cost(p)}\t"
                f"{_uptime(p.uptime_s)}\t{p.ssh_text()}\t{hosts}"
            )
    if not pods:
        print("no pods in this RunPod account")
    for pid, hosts in missing.items():
        print(
            f"warning: inventory host(s) {', '.join(hosts)} name pod {pid}, which this "
            "account does not have: fix `runpod_pod_id:`",
            file=sys.stderr,
        )


def _one(client, pod_id: str):
    from moola_core.errors import MoolaError
    from moola_ops.hosts import runpod

    pod = client.get_pod(runpod.check_pod_id(pod_id))
    if pod is None:
        raise MoolaError(
            f"the RunPod account of this API key has no pod {pod_id}: see `invoke pods`"
        )
    return pod


def _confirm(action: str, pod, yes: str, consequence: str) -> None:
    """Go on only when `--yes` names this pod, or a person at a terminal types its id."""
    from moola_core.errors import MoolaError

    if yes:
        if yes != pod.id:
            raise MoolaError(
                f"--yes names {yes!r} but --pod is {pod.id}: they must be the same pod"
            )
        return
    if not (sys.stdin.isatty() and is_tty()):
        raise MoolaError(f"to {action} {pod.label} off a terminal, confirm with --yes {pod.id}")
    print(f"{action.capitalize()} {pod.label}? {consequence}")
    answer = input(f"Type the pod id ({pod.id}) to {action} it: ").strip()
    if answer != pod.id:
        raise MoolaError(f"not confirmed: {pod.label} was left as it is")


def _journal(step: str, pod, hosts: list[str], **detail) -> None:
    from moola_ops.log.journal import Journal

    Journal(steps.PODS).record(
        hosts[0] if hosts else "", step, "ok", pod=pod.id, name=pod.name, hosts=hosts, **detail
    )


@task(
    help={"pod": POD_HELP, "yes": YES_HELP, "inventory": INVENTORY_HELP},
    dry="pods.stop changes the pod; `invoke pods` shows it",
)
@user_errors
def stop(c, pod, yes="", inventory=""):
    """Stop a pod: its GPU is released and billing for it stops; /workspace (the volume) stays."""
    from moola_ops.hosts import runpod

    inv = _inventory(inventory)
    client = _client(inv)
    target = _one(client, pod)
    hosts = _hosts_of(inv).get(target.id, [])
    if target.desired_status != "RUNNING":
        print(f"{target.label} is already {target.desired_status}: nothing to do")
        return
    reach = (
        f" Inventory host(s) {', '.join(hosts)} become unreachable until it is resumed."
        if hosts
        else ""
    )
    _confirm("stop", target, yes, f"Its GPU is released; /workspace stays.{reach}")
    status = client.stop_pod(target.id)
    runpod.refresh_cache()
    runpod.forget(target.id)
    _journal(steps.POD_STOP, target, hosts, desired_status=status)
    print(f"{target.label}: stop requested (desired status {status or 'unknown'})")


@task(
    help={
        "pod": POD_HELP,
        "yes": YES_HELP,
        "gpu_count": "GPUs to resume with (0, the default: as many as it had)",
        "inventory": INVENTORY_HELP,
    },
    dry="pods.resume changes the pod; `invoke pods` shows it",
)
@user_errors
def resume(c, pod, yes="", gpu_count=0, inventory=""):
    """Start a stopped pod again; its address and SSH port may change (Moola looks them up)."""
    from moola_ops.hosts import runpod

    inv = _inventory(inventory)
    client = _client(inv)
    target = _one(client, pod)
    hosts = _hosts_of(inv).get(target.id, [])
    if target.desired_status == "RUNNING":
        print(f"{target.label} is already RUNNING: nothing to do")
        return
    count = int(gpu_count) or target.gpu_count or 1
    _confirm("resume", target, yes, f"Billing starts again ({_cost(target)}, {count} GPU).")
    status = client.resume_pod(target.id, count)
    runpod.refresh_cache()
    runpod.forget(target.id)
    _journal(steps.POD_RESUME, target, hosts, desired_status=status, gpu_count=count)
    print(
        f"{target.label}: resume requested (desired status {status or 'unknown'}); its public "
        "IP and SSH port may change: Moola looks them up at the next connect. If the pod's "
        f"template makes new host keys at start, check `invoke pods.known-host --pod {target.id}`"
    )


@task(
    help={
        "pod": POD_HELP,
        "yes": "the pod's id again (required: terminating deletes the pod and its volume)",
        "inventory": INVENTORY_HELP,
    },
    dry="pods.terminate deletes the pod; `invoke pods` shows it",
)
@user_errors
def terminate(c, pod, yes="", inventory=""):
    """Delete a pod and its volume for good; needs --yes naming the same pod."""
    from moola_core.errors import MoolaError
    from moola_ops.hosts import runpod

    runpod.check_pod_id(pod)
    if yes != pod:
        raise MoolaError(
            f"terminating deletes pod {pod} and its volume (every release on it) for good: "
            f"repeat the id to confirm, --yes {pod}"
        )
    inv = _inventory(inventory)
    client = _client(inv)
    target = _one(client, pod)
    hosts = _hosts_of(inv).get(target.id, [])
    client.terminate_pod(target.id)
    runpod.refresh_cache()
    runpod.forget(target.id)
    _journal(steps.POD_TERMINATE, target, hosts)
    tail = f"; remove or re-point inventory host(s) {', '.join(hosts)}" if hosts else ""
    print(f"{target.label}: terminated{tail}")


def _pin_refusal(kw: dict) -> str | None:
    if not kw.get("pin"):
        return None
    return (
        "--pin writes known_hosts and the log; `invoke --dry pods.known-host --pod ID` "
        "without it compares the scanned key"
    )


@task(
    name="known-host",
    help={
        "pod": POD_HELP,
        "pin": "write the scanned keys to known_hosts under the pod's alias (replacing its old pin)",
        "inventory": INVENTORY_HELP,
        "json": "print one JSON document",
    },
    dry=_pin_refusal,
)
@user_errors
def known_host(c, pod, inventory="", json=False, pin=False):
    """Scan the pod's SSH host key; say whether it matches the pinned one (a re-created pod)."""
    from moola_ops.hosts import hostkeys, runpod

    inv = _inventory(inventory)
    target = runpod.find_pod(pod, key_file=inv.runpod_api_key_file if inv else None, refresh=True)
    ip, port = target.ssh_endpoint()
    hosts = [h for h in (inv.hosts.values() if inv else ()) if h.runpod_pod_id == target.id]
    files = hostkeys.known_hosts_files(hosts)
    scanned = hostkeys.scan(ip, port)
    report = hostkeys.compare(runpod.key_alias(target.id), ip, port, scanned, files)
    written = None
    if pin:
        written = hostkeys.pin(runpod.key_alias(target.id), scanned, files[-1])
        _journal(
            steps.POD_KNOWN_HOST_PIN,
            target,
            [h.name for h in hosts],
            file=str(written),
            keys=[k.fingerprint for k in scanned],
            was=report.state,
        )
    if json:
        print_json(
            dict(
                report.to_dict(),
                pod=target.id,
                address=f"{ip}:{port}",
                pinned_now=str(written) if written else None,
            )
        )
    else:
        print(f"{target.label} at {ip}:{port}:")
        for key in scanned:
            print(f"  {key.type} {key.fingerprint}")
        print(report.sentence(target.id))
        if written:
            print(f"pinned as {runpod.key_alias(target.id)} in {written}")
    if report.state == "differs" and not pin:
        raise Exit(code=1)


ns = Collection("pods")
for _t in (list_, stop, resume, terminate, known_host):
    ns.add_task(_t)

EXPORTS = [ns]
