"""Label Studio's REST API, spoken with the standard library.

Why not `label-studio-sdk`: it pins its own pydantic, httpx and friends (it would drag Label
Studio's dependency set into Moola's), and Moola needs eight endpoints. They are the documented
ones (api.labelstud.io): projects (list by title, create, read, update), the task import with
`return_task_ids`, the JSON export with `download_all_tasks`, annotations (create, as a reviewer
would), tasks (delete) and users. Every failure a person can cause is one sentence:
Label Studio down, the token refused, a project or task gone.

Tokens: a legacy token (`Authorization: Token ...`) or a personal access token, which is a
JWT refresh token exchanged for a short-lived access token (`/api/token/refresh`) first.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from moola_core.errors import MoolaError

DEFAULT_TIMEOUT_S = 120.0
IMPORT_CHUNK = 1000  # tasks per import request: one request stays well under a minute


class LabelStudioError(MoolaError):
    """Label Studio could not be reached or refused a request (one sentence)."""


class NotFound(LabelStudioError):
    """The project, task or annotation asked for does not exist (HTTP 404)."""


@dataclass
class LabelStudio:
    """A Label Studio server at `url`, used with `token` (legacy token or personal access token)."""

    url: str
    token: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise LabelStudioError(
                f"--url {self.url!r} is not an http(s) address; give e.g. http://127.0.0.1:8080"
            )
        if not self.token:
            raise LabelStudioError(
                "no Label Studio token: pass --token, set LABEL_STUDIO_API_KEY, or start a local "
                "Label Studio with `invoke label.studio`"
            )
        self._auth: str | None = None

    # --- the wire -----------------------------------------------------------------------------

    def _authorization(self) -> str:
        if self._auth is None:
            if self.token.count(".") == 2:  # a personal access token is a JWT refresh token
                access = self._send(
                    "POST", "/api/token/refresh/", {"refresh": self.token}, auth=False
                )
                self._auth = f"Bearer {access['access']}"
            else:
                self._auth = f"Token {self.token}"
        return self._auth

    def call(self, method: str, path: str, body: Any = None, query: dict | None = None) -> Any:
        """One request -> the decoded JSON answer (None for an empty body)."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query, doseq=True)}"
        return self._send(method, path, body)

    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", self._authorization())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refusal(method, path, exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LabelStudioError(
                f"Label Studio at {self.url} does not answer ({reason}); start it (`invoke "
                "label.studio` for a local one) or check --url"
            ) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LabelStudioError(
                f"{self.url}{path.split('?')[0]} answered with something that is not JSON "
                f"({raw[:80]!r}); is --url the Label Studio server?"
            ) from None

    def _refusal(self, method: str, path: str, exc: urllib.error.HTTPError) -> LabelStudioError:
        try:
            answer = json.loads(exc.read() or b"{}")
            detail = answer.get("validation_errors") or answer.get("detail") or answer
        except (ValueError, AttributeError, OSError):
            detail = exc.reason
        where = path.split("?")[0]
        if exc.code in (401, 403):
            return LabelStudioError(
                f"Label Studio at {self.url} refused the token (HTTP {exc.code}: {detail}); copy "
                "the token from Account & Settings into --token or LABEL_STUDIO_API_KEY"
            )
        if exc.code == 404:
            return NotFound(f"Label Studio has no {where} (HTTP 404)")
        return LabelStudioError(
            f"Label Studio answered HTTP {exc.code} to {method} {where}: {_short(detail)}"
        )

    # --- endpoints ----------------------------------------------------------------------------

    def whoami(self) -> dict:
        """The account the token belongs to (checks the address and the token in one call)."""
        return self.call("GET", "/api/current-user/whoami")

    def projects(self, title: str | None = None) -> list[dict]:
        """Every project (with `title`: only those with exactly that title)."""
        out, page = [], 1
        while True:
            answer = self.call("GET", "/api/projects/", query={"page": page, "page_size": 100})
            rows = answer["results"] if isinstance(answer, dict) else answer
            out.extend(rows)
            if not isinstance(answer, dict) or not answer.get("next"):
                break
            page += 1
        return [p for p in out if title is None or p.get("title") == title]

    def project(self, project_id: int) -> dict:
        return self.call("GET", f"/api/projects/{int(project_id)}/")

    def create_project(self, title: str, label_config: str, description: str = "") -> dict:
        return self.call(
            "POST",
            "/api/projects/",
            {"title": title, "label_config": label_config, "description": description},
        )

    def update_project(self, project_id: int, **fields) -> dict:
        return self.call("PATCH", f"/api/projects/{int(project_id)}/", fields)

    def import_tasks(
        self, project_id: int, tasks: list[dict], progress=None, created: list | None = None
    ) -> list[int]:
        """Create `tasks` (with their predictions) -> their task ids, in order. `created`
        receives the ids chunk by chunk, so a caller knows what exists after a failure."""
        ids: list[int] = [] if created is None else created
        for lo in range(0, len(tasks), IMPORT_CHUNK):
            part = tasks[lo : lo + IMPORT_CHUNK]
            answer = self.call(
                "POST",
                f"/api/projects/{int(project_id)}/import",
                part,
                query={"return_task_ids": "true"},
            )
            got = (answer or {}).get("task_ids")
            if not isinstance(got, list) or len(got) != len(part):
                raise LabelStudioError(
                    f"Label Studio created {len(got or [])} of {len(part)} tasks without saying "
                    "which (an edition that imports in the background?); nothing is recorded: "
                    "delete the project's new tasks and export again"
                )
            ids.extend(int(i) for i in got)
            if progress:
                progress(len(ids), len(tasks))
        return ids

    def export_tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations (the JSON export, all tasks)."""
        answer = self.call(
            "GET",
            f"/api/projects/{int(project_id)}/export",
            query={"exportType": "JSON", "download_all_tasks": "true"},
        )
        if not isinstance(answer, list):
            raise LabelStudioError(f"the export of project {project_id} is not a list of tasks")
        return answer

    def annotate(
        self,
        task_id: int,
        result: list[dict],
        *,
        lead_time: float | None = None,
        completed_by: int | None = None,
        was_cancelled: bool = False,
    ) -> dict:
        """Submit an annotation to a task, as a reviewer's Submit button does."""
        body: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if lead_time is not None:
            body["lead_time"] = float(lead_time)
        if completed_by is not None:
            body["completed_by"] = int(completed_by)
        return self.call("POST", f"/api/tasks/{int(task_id)}/annotations/", body)

    def delete_task(self, task_id: int) -> None:
        self.call("DELETE", f"/api/tasks/{int(task_id)}/")

    def users(self) -> dict[int, str]:
        """user id -> email (who a `completed_by` id is)."""
        answer = self.call("GET", "/api/users/")
        rows = answer["results"] if isinstance(answer, dict) else answer
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in rows}

    def create_user(self, email: str) -> int:
        """Add a member to the organization (a second reviewer) -> the user's id."""
        answer = self.call("POST", "/api/users/", {"email": email, "username": email})
        return int(answer["id"])


def _short(detail: Any, limit: int = 200) -> str:
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
