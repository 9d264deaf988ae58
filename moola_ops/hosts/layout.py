"""The remote layout (one home for it) and the names allowed to reach a remote path.

```
WORKSPACE/releases/<version>/      one extracted, verified bundle per version (immutable)
WORKSPACE/releases/<version>.sha256  sha256 of the archive it came from (dedupes uploads)
WORKSPACE/releases/<version>.checked  written only once its runtime check passed (who, when)
WORKSPACE/current -> releases/<v>  switched atomically (ln -s to a temp name, mv -T over it)
WORKSPACE/incoming/<id>/           staging for uploads; promoted only after checksums pass
WORKSPACE/backups/<ts>-<v>.tar     snapshots taken before a switch
WORKSPACE/deploy.lock/holder.json  mkdir lock and who holds it
WORKSPACE/revisions.log            one JSON line per deploy / rollback / restore / drill
```
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from moola_core.errors import MoolaError

# Versions, host names, release and snapshot names all become path components or command
# arguments: allow only a small alphabet, and no "..", so that quoting is the second line of
# defence, not the only one.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")
_WORKSPACE = re.compile(r"(/|~/)[A-Za-z0-9._/+-]*")

BUNDLE_MARKER = ".sha256"  # releases/<v>.sha256: sha256 of the archive releases/<v> came from
# releases/<v>.checked: written on the host by the command that ran releases/<v>'s runtime
# check, only when it passed. A release with neither this marker nor a revisions.log line
# (hosts from before the marker: every release that served is named there) never passed its
# check: an interrupted run left it, and the next deploy or prune removes it.
CHECK_MARKER = ".checked"


def check_name(value: str, what: str) -> str:
    """Return `value` if it is a safe name (letters, digits, . _ + -), else raise MoolaError."""
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or ".." in value:
        raise MoolaError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_', '+' and '-' only "
            "(no spaces, slashes or shell characters), at most 80 characters"
        )
    return value


def check_workspace(path: str) -> str:
    """Return `path` if it is an absolute (or ~/) path of safe characters, else MoolaError."""
    if (
        not _WORKSPACE.fullmatch(path or "")
        or "/../" in f"{path}/"
        or path.rstrip("/") in ("", "~")
    ):
        raise MoolaError(
            f"invalid workspace {path!r}: give an absolute path such as /workspace/moola "
            "made of letters, digits and . _ + - /"
        )
    return path.rstrip("/")


@dataclass(frozen=True)
class Layout:
    """Paths of one host's workspace; every attribute is already shell-quoted where noted."""

    workspace: str

    def __post_init__(self):
        object.__setattr__(self, "workspace", check_workspace(self.workspace))

    @property
    def root(self) -> str:
        """The workspace, quoted for the shell (a leading ~/ stays expandable)."""
        return _quote_path(self.workspace)

    def path(self, *parts: str) -> str:
        """A path under the workspace, quoted for the shell."""
        return _quote_path("/".join([self.workspace, *parts]))

    @property
    def releases(self) -> str:
        return self.path("releases")

    @property
    def current(self) -> str:
        return self.path("current")

    @property
    def incoming(self) -> str:
        return self.path("incoming")

    @property
    def backups(self) -> str:
        return self.path("backups")

    @property
    def lock(self) -> str:
        return self.path("deploy.lock")

    @property
    def revisions(self) -> str:
        return self.path("revisions.log")

    def release(self, version: str) -> str:
        return self.path("releases", check_name(version, "version"))

    def staging(self, deployment: str) -> str:
        return self.path("incoming", check_name(deployment, "deployment id"))

    def backup(self, snapshot: str) -> str:
        return self.path("backups", check_name(snapshot, "snapshot name"))


def _quote_path(path: str) -> str:
    # "~/x" must stay unquoted at the tilde for the remote shell to expand it to $HOME.
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
