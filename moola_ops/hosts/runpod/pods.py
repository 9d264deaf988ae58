"""A pod as Moola reads it from the API (Pod, Port), where its SSH is now
(`Pod.ssh_endpoint`), pod ids, the known_hosts alias of its key, and the errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from moola_core.errors import MoolaError

SSH_PORT = 22
KEY_ALIAS_PREFIX = "runpod-"  # known_hosts name of a pod's key: `runpod-<pod id>` (HostKeyAlias)

_POD_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")


class RunPodError(MoolaError):
    """The RunPod API could not answer (key, network, rate limit, server): state unknown."""

    check = "pod"  # the healthcheck's name for this check
    nagios_state = 3  # UNKNOWN: we could not learn where the pod is


class PodUnavailable(RunPodError):
    """The pod is known but cannot be reached over SSH: stopped, no public IP, no TCP 22."""

    nagios_state = 2  # CRITICAL: the host is down as far as a deploy is concerned


def check_pod_id(pod_id: str) -> str:
    """A pod id is letters and digits (e.g. `ldl1dxirsim64n`); anything else is refused."""
    if not isinstance(pod_id, str) or not _POD_ID.match(pod_id):
        raise MoolaError(
            f"{pod_id!r} is not a RunPod pod id (letters and digits, as `invoke pods` or the "
            "console shows it)"
        )
    return pod_id


def key_alias(pod_id: str) -> str:
    """The known_hosts name under which a pod's host key is pinned (OpenSSH HostKeyAlias)."""
    return f"{KEY_ALIAS_PREFIX}{pod_id}"


@dataclass(frozen=True)
class Port:
    """One entry of a pod's `runtime.ports`."""

    ip: str | None
    is_ip_public: bool
    private_port: int | None
    public_port: int | None
    type: str


@dataclass(frozen=True)
class Pod:
    """What Moola knows of one pod, read from the API."""

    id: str
    name: str
    desired_status: str
    gpu_count: int
    gpu_name: str | None
    cost_per_hr: float | None
    uptime_s: int | None  # None: no runtime (stopped or starting)
    ports: tuple[Port, ...]
    image: str | None = None
    last_status_change: str | None = None
    has_runtime: bool = False

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Pod:
        runtime = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else None
        ports = []
        for p in (runtime or {}).get("ports") or []:
            if isinstance(p, dict):
                ports.append(
                    Port(
                        ip=p.get("ip") or None,
                        is_ip_public=bool(p.get("isIpPublic")),
                        private_port=_int(p.get("privatePort")),
                        public_port=_int(p.get("publicPort")),
                        type=str(p.get("type") or "").lower(),
                    )
                )
        machine = raw.get("machine") if isinstance(raw.get("machine"), dict) else {}
        cost = raw.get("costPerHr")
        return cls(
            id=str(raw.get("id") or ""),
            name=str(raw.get("name") or ""),
            desired_status=str(raw.get("desiredStatus") or "UNKNOWN").upper(),
            gpu_count=_int(raw.get("gpuCount")) or 0,
            gpu_name=machine.get("gpuDisplayName") or None,
            cost_per_hr=float(cost) if isinstance(cost, int | float) else None,
            uptime_s=_int((runtime or {}).get("uptimeInSeconds")),
            ports=tuple(ports),
            image=raw.get("imageName") or None,
            last_status_change=raw.get("lastStatusChange") or None,
            has_runtime=runtime is not None,
        )

    @property
    def label(self) -> str:
        return f"pod {self.id} ({self.name})" if self.name else f"pod {self.id}"

    def ssh_endpoint(self) -> tuple[str, int]:
        """(public IP, public port) mapped to 22 over TCP, or PodUnavailable saying the fix."""
        if self.desired_status == "TERMINATED":
            raise PodUnavailable(
                f"{self.label} was terminated: create a pod and put its id in `runpod_pod_id:`"
            )
        if self.desired_status != "RUNNING":
            raise PodUnavailable(
                f"{self.label} is stopped ({self.desired_status}): resume it with "
                f"`invoke pods.resume --pod {self.id}` or in RunPod's console"
            )
        if not self.has_runtime:
            raise PodUnavailable(
                f"{self.label} is starting (RunPod reports no runtime yet): wait a minute, "
                "then retry"
            )
        ssh = [p for p in self.ports if p.private_port == SSH_PORT]
        tcp = [p for p in ssh if p.type == "tcp"]
        if not tcp:
            how = " (only over HTTP)" if ssh else ""
            raise PodUnavailable(
                f"{self.label} exposes no TCP port for 22{how}: expose TCP port 22 in the "
                "pod's template (Edit Pod, Expose TCP Ports) and restart it; RunPod's proxied "
                "SSH refuses commands"
            )
        public = [p for p in tcp if p.is_ip_public and p.ip and p.public_port]
        if not public:
            raise PodUnavailable(
                f"{self.label} has no public IP for port 22 (only {tcp[0].ip or 'none'}): "
                "deploy the pod on a machine with a public IP (supportPublicIp; Secure Cloud "
                "has one)"
            )
        return public[0].ip, int(public[0].public_port)

    def ssh_text(self) -> str:
        """`ip:port`, or why there is none (for listings)."""
        try:
            ip, port = self.ssh_endpoint()
        except PodUnavailable as exc:
            return f"- ({_reason_word(exc)})"
        return f"{ip}:{port}"

    def to_dict(self) -> dict[str, Any]:
        try:
            ip, port = self.ssh_endpoint()
            ssh, problem = {"ip": ip, "port": port}, None
        except PodUnavailable as exc:
            ssh, problem = None, str(exc)
        return {
            "id": self.id,
            "name": self.name,
            "status": self.desired_status,
            "gpu": self.gpu_name,
            "gpu_count": self.gpu_count,
            "cost_per_hr": self.cost_per_hr,
            "uptime_s": self.uptime_s,
            "image": self.image,
            "ssh": ssh,
            "ssh_problem": problem,
        }


def _reason_word(exc: PodUnavailable) -> str:
    text = str(exc)
    for word, short in (
        ("terminated", "terminated"),
        ("is stopped", "stopped"),
        ("starting", "starting"),
        ("no TCP port", "no TCP 22"),
        ("no public IP", "no public IP"),
    ):
        if word in text:
            return short
    return "unreachable"


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None
