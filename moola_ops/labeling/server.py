"""A local Label Studio for one person, the tests and the demo: started the documented way
(`label-studio start`) from its own virtual environment, on 127.0.0.1 and a free port, with its
default SQLite store in a data folder of its own; the admin user and its API token are created
non-interactively at start; stopped by its pid.

scripts/labelstudio_venv.sh installs `.venv-labelstudio` and keeps a migrated, empty SQLite
database beside it (`.venv-labelstudio/moola-template/label_studio.sqlite3`): a fresh start
copies it into the data folder, so Label Studio does not spend minutes migrating an empty
database on every start (measured in docs/labeling.md). Nothing reaches the network: the
version check, analytics and Sentry are switched off.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.localproc import end_group

DEFAULT_VENV = Path(".venv-labelstudio")
DEFAULT_ROOT = Path(".moola/labelstudio")
TEMPLATE = "moola-template/label_studio.sqlite3"
ADMIN = "admin@moola.local"
START_TIMEOUT_S = 240.0
# settings Label Studio reads from its environment: no call leaves this machine
QUIET_ENV = {
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_SENTRY_DSN": "",
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
}


@dataclass
class LocalStudio:
    """A running local Label Studio: where it listens, its token, its pid and data folder."""

    url: str
    port: int
    pid: int
    token: str
    data_dir: str
    password: str = ""  # the admin's, for a browser login (kept with the token, mode 0600)
    started_s: float = 0.0  # seconds from launch to answering with the token

    def to_dict(self) -> dict:
        return asdict(self)

    def client(self):
        from moola_ops.labeling.studio import LabelStudio

        return LabelStudio(self.url, self.token)

    def alive(self) -> bool:
        return _is_ours(self.pid, self.data_dir)


def venv_path(venv: str | os.PathLike = DEFAULT_VENV) -> Path:
    """The Label Studio venv: as given, or (the default) in the current folder, else beside
    the project that holds this code (a task run from another folder with `invoke -r`)."""
    path = Path(venv)
    if path == DEFAULT_VENV and not path.exists():
        beside = Path(__file__).resolve().parents[2] / DEFAULT_VENV
        if beside.exists():
            return beside
    return path


def executable(venv: str | os.PathLike = DEFAULT_VENV) -> Path:
    """The `label-studio` program of the venv, or one sentence saying how to install it."""
    program = venv_path(venv) / "bin" / "label-studio"
    if not program.is_file():
        raise MoolaError(
            f"Label Studio is not installed ({program} is missing); run "
            "`bash scripts/labelstudio_venv.sh` (scripts/setup.sh does it)"
        )
    return program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_studio(
    data_dir: str | os.PathLike,
    *,
    venv: str | os.PathLike = DEFAULT_VENV,
    port: int = 0,
    timeout_s: float = START_TIMEOUT_S,
) -> LocalStudio:
    """Start Label Studio on 127.0.0.1 with its SQLite store in `data_dir` (made empty first
    when it holds no database) and wait until it answers with the new token. A free port
    taken by another process between our probe and its bind is tried once more, on another."""
    for attempt in (1, 2):
        try:
            return _start(data_dir, venv=venv, port=port, timeout_s=timeout_s)
        except PortTaken:
            if port or attempt == 2:
                raise
    raise AssertionError("unreachable")


class PortTaken(MoolaError):
    """Label Studio could not bind its port (another process took it)."""


def _start(data_dir, *, venv, port: int, timeout_s: float) -> LocalStudio:
    program = executable(venv)
    data = Path(data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    database = data / "label_studio.sqlite3"
    template = venv_path(venv) / TEMPLATE
    if not database.exists() and template.is_file():
        shutil.copyfile(template, database)
    token = _token(data)
    password = _secret(data, "moola-password", secrets.token_urlsafe(16))
    port = int(port) or free_port()
    log = open(data / "labelstudio.log", "ab")  # noqa: SIM115 (the child holds it)
    args = [
        str(program.absolute()),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        # NAME=VALUE: a secret may begin with "-", which argparse would take for a flag
        f"--username={ADMIN}",
        f"--password={password}",
        f"--user-token={token}",
        "--enable-legacy-api-token",
    ]
    env = {**os.environ, **QUIET_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(data)}
    started = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=data,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one, never by name
    )
    log.close()
    studio = LocalStudio(f"http://127.0.0.1:{port}", port, proc.pid, token, str(data), password)
    try:
        _wait_ready(studio, proc, timeout_s)
    except BaseException:
        stop_process(proc.pid, str(data))
        raise
    studio.started_s = round(time.monotonic() - started, 2)
    return studio


def _token(data: Path) -> str:
    """The admin's API token: Label Studio sets it when it creates the user, on the first start
    in a data folder, so later starts in the same folder reuse it."""
    return _secret(data, "moola-token", secrets.token_hex(20))


def _secret(data: Path, name: str, new: str) -> str:
    """A secret kept in the data folder (mode 0600): read when there, else `new`, saved."""
    path = data / name
    if path.is_file():
        return path.read_text().strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    return new


def _wait_ready(studio: LocalStudio, proc: subprocess.Popen, timeout_s: float) -> None:
    from moola_ops.labeling.studio import LabelStudioError

    client = studio.client()
    client.timeout_s = 5.0
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = _tail(Path(studio.data_dir) / "labelstudio.log")
            if "port is already in use" in tail:
                raise PortTaken(f"port {studio.port} on 127.0.0.1 is taken: pass another --port")
            raise MoolaError(
                f"Label Studio exited with status {proc.returncode} while starting; its log: "
                f"{_tail(Path(studio.data_dir) / 'labelstudio.log')}"
            )
        try:
            client.whoami()
            return
        except LabelStudioError as exc:
            if "refused the token" in str(exc):
                raise MoolaError(
                    f"Label Studio in {studio.data_dir} started but refuses the new token: the "
                    "folder holds an older database; use an empty --data-dir"
                ) from None
        if time.monotonic() > deadline:
            raise MoolaError(
                f"Label Studio did not answer on {studio.url} within {timeout_s:.0f} s; its log: "
                f"{_tail(Path(studio.data_dir) / 'labelstudio.log')}"
            )
        time.sleep(0.25)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"


def _is_ours(pid: int, data_dir: str) -> bool:
    """The pid is still a Label Studio started on `data_dir` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in cmdline and os.fsencode(data_dir) in cmdline


def stop_process(pid: int, data_dir: str, timeout_s: float = 20.0) -> bool:
    """Stop the Label Studio we started (its process group, by its pid); True when it ran."""
    return end_group(pid, lambda: _is_ours(pid, data_dir), timeout_s=timeout_s, poll_s=0.1)


# --- the one local instance of `invoke label.studio` (state in .moola/labelstudio) ------------


def state_file(root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    return Path(root) / "state.json"


def save_state(studio: LocalStudio, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Write the instance's address and token (mode 0600) for the other label tasks."""
    path = state_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".state.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(studio.to_dict(), fh, indent=1)
    os.replace(tmp, path)
    return path


def load_state(root: str | os.PathLike = DEFAULT_ROOT) -> LocalStudio | None:
    """The local instance `invoke label.studio` started, if it still runs."""
    try:
        raw = json.loads(state_file(root).read_text())
        studio = LocalStudio(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return studio if studio.alive() else None


def stop_local(root: str | os.PathLike = DEFAULT_ROOT) -> LocalStudio | None:
    """Stop the local instance (its data folder stays); None when none ran."""
    studio = load_state(root)
    if studio is not None:
        stop_process(studio.pid, studio.data_dir)
    with_state = state_file(root)
    if with_state.exists():
        with_state.unlink()
    return studio


def connect(url: str = "", token: str = "", root: str | os.PathLike = DEFAULT_ROOT):
    """The Label Studio to talk to: --url/--token, else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY
    (the names Label Studio's own SDK reads), else the local instance of `invoke label.studio`."""
    from moola_ops.labeling.studio import LabelStudio

    url = url or os.environ.get("LABEL_STUDIO_URL", "")
    token = token or os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not url or not token:
        local = load_state(root)
        if local is None and not url:
            raise MoolaError(
                "no Label Studio named: pass --url and --token (or set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY), or start a local one with `invoke label.studio`"
            )
        if local is not None:
            url, token = url or local.url, token or local.token
    return LabelStudio(url, token)
