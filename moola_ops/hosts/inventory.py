"""The inventory: which hosts exist, how to reach them, what they should have.

`inventory/hosts.yaml` is validated with pydantic (the schema: `moola_ops/hosts/inventory_schema.py`); a
malformed file is reported with the field
and its line. Hosts marked `sandbox: true` are the local stand-in hosts: their address, port,
key and workspace come from the running sandbox (`.sandbox/state.json`). A host without
`hostname` is looked up in `~/.ssh/config` by its name (aliases work). A host naming
`runpod_pod_id:` is found through RunPod's API when it is connected to (`Host.endpoint()`,
moola_ops/hosts/runpod/); nothing asks the API before that. No key material lives in the inventory,
only paths to keys (SSH keys, the RunPod API key file).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.hosts.inventory_schema import (
    DEFAULT_WORKSPACE,
    HOOK_TIMEOUT_S,
    file_model,
    line_of,
    refuse_secrets,
)
from moola_ops.hosts.layout import check_name

DEFAULT_PATH = Path("inventory/hosts.yaml")
DEFAULT_SANDBOX_ROOT = Path(".sandbox")


@dataclass(frozen=True)
class Hook:
    """A user hook from the inventory's `hooks:` (docs/runbook.md "Hooks"): `run` is a shell
    command run on the host in its workspace (`where` "host") or here ("local"), bounded by
    `timeout` seconds, logged as the step hook:<point>:<name>."""

    point: str
    name: str
    run: str
    where: str = "host"
    timeout: float = HOOK_TIMEOUT_S


@dataclass(frozen=True)
class Host:
    """One resolved host: everything the transport and the engine need to act on it."""

    name: str
    hostname: str  # address or ~/.ssh/config alias
    port: int | None = None  # None: from ~/.ssh/config, else 22
    user: str | None = None  # None: from ~/.ssh/config, else the local user
    identity_file: str | None = None
    known_hosts: str | None = None  # extra known_hosts file checked with ~/.ssh/known_hosts
    workspace: str = DEFAULT_WORKSPACE
    python: str = "python3"
    gpu: str | None = None  # expected GPU (substring of nvidia-smi's name), None: no GPU needed
    latency_sla_ms: float | None = None  # overrides the bundle's SLA for this host
    groups: tuple[str, ...] = ()
    connect_timeout_s: float = 10.0  # per connection attempt
    connect_retries: int = 2  # further attempts when connection set-up fails (never commands)
    keepalive_s: float = 5.0  # SSH keepalive interval; 3 silent intervals = the host is dead
    smoke: str | None = None  # shell command run in `current` after a switch; failure rolls back
    sandbox: bool = False
    ssh_config: str | None = None  # an ssh_config file to read instead of ~/.ssh/config
    allowed_signers: str | None = None  # when set, deploy refuses bundles not signed by one
    # Nagios threshold ranges of the health check for this host: ((figure, range), ...)
    warning: tuple[tuple[str, str], ...] = ()
    critical: tuple[tuple[str, str], ...] = ()
    serve_port: int | None = None  # the model server's public port (None: 8080; 0: pick once)
    serve_bind: str = "127.0.0.1"  # the proxy's address; 0.0.0.0 to expose it (docs/serving.md)
    serve_auth: str = "auto"  # clients need the host's token: auto (beyond loopback) | always
    runpod_pod_id: str | None = None  # address and port come from RunPod's API at connect
    runpod_api_key_file: str | None = None  # from the defaults; env RUNPOD_API_KEY wins
    hooks: tuple[Hook, ...] = ()  # the defaults', its groups' (in order), then its own

    @property
    def address(self) -> str:
        """user@hostname:port as far as known, for messages."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        pod = f"pod {self.runpod_pod_id}" if self.runpod_pod_id else ""
        if not self.hostname:  # a pod not looked up yet
            return f"{user}{pod}"
        return f"{user}{self.hostname}{port}" + (f" ({pod})" if pod else "")

    def endpoint(self, *, refresh: bool = False, cancel=None) -> Host:
        """This host with the address to connect to now: itself, or for a `runpod_pod_id` host
        its pod's public IP and the port mapped to 22, asked of RunPod's API (cached briefly;
        `refresh` asks again; `cancel`, a threading.Event, set: the question ends at once).
        Raises MoolaError with the fix when the pod cannot be reached.
        """
        if not self.runpod_pod_id:
            return self
        from moola_ops.hosts.runpod import resolve_host

        return resolve_host(self, refresh=refresh, cancel=cancel)


@dataclass
class Inventory:
    """Named hosts and groups; `resolve` turns names or groups into `Host`s."""

    hosts: dict[str, Host]
    source: str = "<memory>"
    sandbox_root: Path = field(default_factory=lambda: DEFAULT_SANDBOX_ROOT)
    runpod_api_key_file: str | None = None  # defaults.runpod_api_key_file, for `invoke pods`

    @property
    def groups(self) -> dict[str, list[str]]:
        """{group: [host names]} in inventory order."""
        groups: dict[str, list[str]] = {}
        for host in self.hosts.values():
            for group in host.groups:
                groups.setdefault(group, []).append(host.name)
        return groups

    def names(self, selection: str | list[str] | tuple[str, ...]) -> list[str]:
        """Host names selected by host names, groups and globs over host names (`local-*`),
        comma separated or a list, in the order given, each once.

        Unknown names raise MoolaError listing the known hosts and groups; names carrying shell
        characters are refused before anything else happens.
        """
        items = selection.split(",") if isinstance(selection, str) else list(selection)
        items = [item.strip() for item in items if item and item.strip()]
        if not items:
            raise MoolaError("no host given: pass --host NAME (a host or a group, comma separated)")
        chosen: dict[str, None] = {}
        groups = self.groups
        for item in items:
            if any(ch in item for ch in "*?["):
                # a glob: its letters pass the same gate as a name, the wildcards are ours
                check_name(
                    item.replace("*", "x")
                    .replace("?", "x")
                    .replace("[", "x")
                    .replace("]", "x")
                    .replace("!", "x"),
                    "host pattern",
                )
                names = [n for n in self.hosts if fnmatch.fnmatchcase(n, item)]
                names = names or [
                    n
                    for g, members in groups.items()
                    if fnmatch.fnmatchcase(g, item)
                    for n in members
                ]
                if not names:
                    raise MoolaError(
                        f"no host matches {item!r} in {self.source}; known hosts: "
                        f"{', '.join(self.hosts) or 'none'}"
                    )
            else:
                check_name(item, "host name")
                if item in self.hosts:
                    names = [item]
                elif item in groups:
                    names = groups[item]
                else:
                    raise MoolaError(
                        f"unknown host or group {item!r} in {self.source}; known hosts: "
                        f"{', '.join(self.hosts) or 'none'}; groups: {', '.join(groups) or 'none'}"
                    )
            for name in names:
                chosen.setdefault(name, None)
        return list(chosen)

    def resolve(self, selection: str | list[str] | tuple[str, ...]) -> list[Host]:
        """Hosts named by `selection` (see `names`: hosts, groups, globs), ready to connect."""
        return [self._materialise(self.hosts[name]) for name in self.names(selection)]

    def _materialise(self, host: Host) -> Host:
        if not host.sandbox:
            return host
        from moola_ops.hosts.standin import load_state

        sandbox = load_state(self.sandbox_root)
        running = sandbox.hosts.get(host.name) if sandbox else None
        if running is None or not running.alive():
            raise MoolaError(
                f"host {host.name} is a local stand-in host and it is not running: "
                f"run `invoke sandbox up` first"
            )
        return _from_sandbox_host(running, host)

    @classmethod
    def from_sandbox(
        cls, sandbox, *, groups: tuple[str, ...] = ("local",), **overrides
    ) -> Inventory:
        """An inventory of every host of a running `moola_ops.hosts.standin.Sandbox` (tests, benches).

        `overrides` set Host fields on every host (e.g. connect_timeout_s=2, smoke="false").
        """
        hosts = {}
        for name, running in sorted(sandbox.hosts.items()):
            template = Host(name=name, hostname=running.hostname, groups=groups, sandbox=True)
            hosts[name] = replace(_from_sandbox_host(running, template), sandbox=False, **overrides)
        return cls(hosts=hosts, source=f"sandbox {sandbox.root}")


def _from_sandbox_host(running, host: Host) -> Host:
    return replace(
        host,
        hostname=running.hostname,
        python=running.python,
        port=running.port,
        user=running.user,
        identity_file=running.identity_file,
        known_hosts=running.known_hosts,
        workspace=running.workspace,
        # stand-in hosts share 127.0.0.1: each picks a free public port once and keeps it
        serve_port=host.serve_port if host.serve_port is not None else 0,
    )


def load_inventory(
    path: str | os.PathLike | None = None, *, sandbox_root: str | os.PathLike | None = None
) -> Inventory:
    """Read and validate the inventory file (default inventory/hosts.yaml, env MOOLA_INVENTORY)."""
    import yaml
    from pydantic import ValidationError as PydanticError

    source = Path(path or os.environ.get("MOOLA_INVENTORY") or DEFAULT_PATH)
    if not source.exists():
        # cron and `invoke -r DIR` run from elsewhere; a relative default is then the mystery
        where = "" if source.is_absolute() else f" (relative to {Path.cwd()}: cd to the project)"
        raise MoolaError(
            f"inventory {source} not found{where}: create it (see docs/inventory.md) "
            "or pass --inventory"
        )
    from moola_core.yaml_config import read_text

    text = read_text(source, "inventory")
    try:
        raw = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MoolaError(
            f"{source}{where} is not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise MoolaError(
            f"{source} must be a mapping with a `hosts:` section (see docs/inventory.md)"
        )
    refuse_secrets(raw, source)
    try:
        parsed = file_model().model_validate(raw)
    except PydanticError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        line = line_of(tree, loc)
        field_name = ".".join(loc) or "file"
        msg = first["msg"].removeprefix("Value error, ")
        raise MoolaError(
            f"{source} line {line}: {field_name}: {msg} (see docs/inventory.md)"
        ) from None
    except MoolaError as exc:  # a check_name inside a validator: name the file
        raise MoolaError(f"{source}: {exc}") from None

    d = parsed.defaults
    hosts = {}
    for name, entry in parsed.hosts.items():
        hosts[name] = Host(
            name=name,
            # no hostname: the name is an ~/.ssh/config alias; a pod: looked up at connect
            hostname="" if entry.runpod_pod_id else (entry.hostname or name),
            port=None if entry.runpod_pod_id else (entry.port or d.port),
            user=entry.user or d.user,
            identity_file=_expand(entry.identity_file or d.identity_file),
            known_hosts=_expand(entry.known_hosts or d.known_hosts),
            workspace=entry.workspace or d.workspace,
            python=entry.python or d.python,
            gpu=entry.gpu,
            latency_sla_ms=entry.latency_sla_ms,
            groups=tuple(entry.groups),
            connect_timeout_s=entry.connect_timeout_s or d.connect_timeout_s,
            connect_retries=_first(entry.connect_retries, d.connect_retries),
            keepalive_s=_first(entry.keepalive_s, d.keepalive_s),
            smoke=entry.smoke,
            sandbox=entry.sandbox,
            ssh_config=_expand(entry.ssh_config or d.ssh_config),
            allowed_signers=_expand(entry.allowed_signers or d.allowed_signers),
            warning=tuple(entry.warning.items()),
            critical=tuple(entry.critical.items()),
            serve_port=entry.serve_port if entry.serve_port is not None else d.serve_port,
            serve_bind=entry.serve_bind or d.serve_bind,
            serve_auth=entry.serve_auth or d.serve_auth,
            runpod_pod_id=entry.runpod_pod_id,
            runpod_api_key_file=_expand(d.runpod_api_key_file),
            hooks=_hooks_of(
                [d.hooks, *(parsed.groups[g].hooks for g in entry.groups if g in parsed.groups)]
                + [entry.hooks]
            ),
        )
    root = Path(sandbox_root or DEFAULT_SANDBOX_ROOT)  # the sandbox tasks' default root
    return Inventory(
        hosts=hosts,
        source=str(source),
        sandbox_root=root,
        runpod_api_key_file=_expand(d.runpod_api_key_file),
    )


def _hooks_of(sections: list[dict]) -> tuple[Hook, ...]:
    """The hooks of the defaults, the host's groups and the host, in that order per point; a
    later section's hook of the same point and name replaces the earlier one in its place."""
    chosen: dict[tuple[str, str], Hook] = {}
    for section in sections:
        for point, hooks in section.items():
            for h in hooks:
                chosen[(point, h.name)] = Hook(point, h.name, h.run, h.where, h.timeout)
    return tuple(chosen.values())


def _first(value, default):
    """`value` unless it is None (0 is a real choice: no retries, no keepalives)."""
    return default if value is None else value


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else None
