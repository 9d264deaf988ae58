"""The inventory file's schema: every key a host or the defaults may have, with its checks
(pydantic, imported on first use so `invoke --list` stays light), the refusal of secrets, and
the YAML line a validation error points at. `moola_ops.hosts.inventory.load_inventory` uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from moola_core.errors import MoolaError
from moola_ops.hosts.layout import check_name, check_workspace
from moola_ops.log import steps

DEFAULT_WORKSPACE = "/workspace/moola"
HOOK_TIMEOUT_S = 60.0  # a hook's default bound (seconds); at most MAX_HOOK_TIMEOUT_S
MAX_HOOK_TIMEOUT_S = 3600.0


def _workspace_of(value: str) -> str:
    """A workspace as the inventory accepts it: absolute on the host, never `~/...`."""
    if value.startswith("~"):
        # the shell would expand it, but uploads (SFTP) and the paths in every message would not
        raise ValueError(
            f"workspace {value!r} starts with '~', which uploads do not expand: write the "
            "absolute path on the host, e.g. /root/moola or /workspace/moola"
        )
    return check_workspace(value)


def file_model():
    """The pydantic model of the whole file (InventoryFile), built on first use."""
    # pydantic is imported lazily: `invoke --list` must not pay for it.
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class HookEntry(BaseModel):
        """One user hook (docs/runbook.md "Hooks"): a shell command on the host (in its
        workspace) or on this machine, bounded by `timeout` seconds."""

        model_config = ConfigDict(extra="forbid")

        name: str
        run: str = Field(min_length=1)
        where: Literal["host", "local"] = "host"
        timeout: float = Field(default=HOOK_TIMEOUT_S, gt=0, le=MAX_HOOK_TIMEOUT_S)

        @field_validator("name")
        @classmethod
        def _name(cls, value: str) -> str:
            try:
                return check_name(value, "hook name")
            except MoolaError as exc:
                raise ValueError(str(exc)) from None

        @field_validator("run")
        @classmethod
        def _run(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("the hook's `run:` command is empty")
            return value

    def _hooks(value: Any) -> dict[str, list[Any]]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(
                f"hooks must map a point ({', '.join(steps.USER_POINTS)}) to a list of hooks"
            )
        for point, hooks in value.items():
            if point not in steps.USER_POINTS:
                raise ValueError(
                    f"unknown hook point {point!r}: use one of {', '.join(steps.USER_POINTS)}"
                )
            if not isinstance(hooks, list):
                raise ValueError(
                    f"hooks.{point} must be a list of hooks, each with `name:` and `run:`"
                )
            names = [h.get("name") for h in hooks if isinstance(h, dict)]
            twice = sorted({n for n in names if n is not None and names.count(n) > 1})
            if twice:
                raise ValueError(f"hooks.{point} names {', '.join(map(str, twice))} twice")
        return value

    Hooks = dict[str, list[HookEntry]]

    class HostEntry(BaseModel):
        model_config = ConfigDict(extra="forbid")

        hostname: str | None = None
        port: int | None = Field(default=None, ge=1, le=65535)
        user: str | None = None
        identity_file: str | None = None
        known_hosts: str | None = None
        workspace: str | None = None
        python: str | None = None
        gpu: str | None = None
        latency_sla_ms: float | None = Field(default=None, gt=0)
        groups: list[str] = []
        connect_timeout_s: float | None = Field(default=None, gt=0, le=300)
        connect_retries: int | None = Field(default=None, ge=0, le=10)
        keepalive_s: float | None = Field(default=None, ge=0, le=300)
        smoke: str | None = None
        sandbox: bool = False
        ssh_config: str | None = None
        allowed_signers: str | None = None
        warning: dict[str, str] = {}
        critical: dict[str, str] = {}

        @field_validator("warning", "critical", mode="before")
        @classmethod
        def _thresholds(cls, value: Any) -> dict[str, str]:
            from moola_ops.nagios import parse_thresholds

            if not isinstance(value, dict):
                raise ValueError("a mapping of figure: Nagios range, e.g. {p99_ms: '~:40'}")
            text = ",".join(f"{k}={v}" for k, v in value.items())
            try:
                parse_thresholds(text, "threshold")
            except MoolaError as exc:
                raise ValueError(str(exc)) from None
            return {str(k): str(v) for k, v in value.items()}

        serve_port: int | None = Field(default=None, ge=0, le=65535)
        serve_bind: str | None = None
        serve_auth: Literal["auto", "always"] | None = None
        runpod_pod_id: str | None = None
        hooks: Hooks = {}

        @field_validator("hooks", mode="before")
        @classmethod
        def _hooks(cls, value: Any) -> Any:
            return _hooks(value)

        @field_validator("runpod_pod_id")
        @classmethod
        def _pod_id(cls, value: str | None) -> str | None:
            from moola_ops.hosts.runpod import check_pod_id

            return None if value is None else check_pod_id(value)

        @model_validator(mode="after")
        def _one_address(self):
            if self.runpod_pod_id and (self.hostname or self.port or self.sandbox):
                given = "hostname" if self.hostname else "port" if self.port else "sandbox"
                raise ValueError(
                    f"runpod_pod_id and {given} both given: keep runpod_pod_id (the address "
                    "and port come from RunPod) or remove it"
                )
            return self

        @field_validator("groups")
        @classmethod
        def _groups(cls, value: list[str]) -> list[str]:
            for group in value:
                check_name(group, "group name")
            return value

        @field_validator("workspace")
        @classmethod
        def _workspace(cls, value: str | None) -> str | None:
            return None if value is None else _workspace_of(value)

    class Defaults(BaseModel):
        model_config = ConfigDict(extra="forbid")

        user: str | None = None
        port: int | None = Field(default=None, ge=1, le=65535)
        identity_file: str | None = None
        known_hosts: str | None = None
        workspace: str = DEFAULT_WORKSPACE
        python: str = "python3"
        connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
        connect_retries: int = Field(default=2, ge=0, le=10)
        keepalive_s: float = Field(default=5.0, ge=0, le=300)
        ssh_config: str | None = None
        allowed_signers: str | None = None
        serve_port: int | None = Field(default=None, ge=0, le=65535)
        serve_bind: str = "127.0.0.1"
        serve_auth: Literal["auto", "always"] = "auto"  # always: a token even on loopback
        runpod_api_key_file: str | None = None  # a path; the key itself never lives here
        hooks: Hooks = {}  # every host's, before its groups' and its own

        @field_validator("hooks", mode="before")
        @classmethod
        def _hooks(cls, value: Any) -> Any:
            return _hooks(value)

        @field_validator("workspace")
        @classmethod
        def _workspace(cls, value: str) -> str:
            return _workspace_of(value)

    class GroupEntry(BaseModel):
        """What a group's hosts share beyond their own entries: today, hooks."""

        model_config = ConfigDict(extra="forbid")

        hooks: Hooks = {}

        @field_validator("hooks", mode="before")
        @classmethod
        def _hooks(cls, value: Any) -> Any:
            return _hooks(value)

    class InventoryFile(BaseModel):
        model_config = ConfigDict(extra="forbid")

        defaults: Defaults = Defaults()
        hosts: dict[str, HostEntry]
        groups: dict[str, GroupEntry] = {}

        @field_validator("hosts")
        @classmethod
        def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
            for name in value:
                check_name(name, "host name")
            return value

        @model_validator(mode="after")
        def _known_groups(self):
            used = {g for entry in self.hosts.values() for g in entry.groups}
            for group in self.groups:
                check_name(group, "group name")
                if group not in used:
                    raise ValueError(
                        f"groups.{group}: no host is in group {group!r} (add it to a host's "
                        f"`groups:`, or fix the name; groups in use: {', '.join(sorted(used)) or 'none'})"
                    )
            return self

    return InventoryFile


def refuse_secrets(raw: dict, source: Path) -> None:
    """An API key written into the inventory is refused by name, never echoed."""
    sections = [("defaults", raw.get("defaults"))]
    hosts = raw.get("hosts")
    if isinstance(hosts, dict):
        sections += [(f"hosts.{name}", entry) for name, entry in hosts.items()]
    for where, section in sections:
        if isinstance(section, dict) and "runpod_api_key" in section:
            raise MoolaError(
                f"{source}: {where}.runpod_api_key: the inventory must not hold the RunPod API "
                "key; set RUNPOD_API_KEY or put the key in a file (mode 600) and name it with "
                "`runpod_api_key_file:` under defaults"
            )


def line_of(tree, loc: tuple[str, ...]) -> int:
    """1-based line of the deepest YAML node along `loc` (pydantic's error location)."""
    node, line = tree, (tree.start_mark.line + 1 if tree is not None else 1)
    for key in loc:
        if node is None:
            break
        if hasattr(node, "value") and isinstance(node.value, list) and node.value:
            if isinstance(node.value[0], tuple):  # mapping: (key node, value node) pairs
                match = next((kv for kv in node.value if kv[0].value == key), None)
                if match is None:
                    break
                line = match[0].start_mark.line + 1
                node = match[1]
                continue
            if key.isdigit() and int(key) < len(node.value):  # sequence
                node = node.value[int(key)]
                line = node.start_mark.line + 1
                continue
        break
    return line
