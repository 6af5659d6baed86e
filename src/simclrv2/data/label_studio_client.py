"""A Label Studio server's REST API, with the standard library: create or find a project, attach the
image folder as local storage, import tasks (with their predictions) and export the annotations.

The API key comes from ``LABEL_STUDIO_API_KEY``: a legacy token (the server started with
``--enable-legacy-api-token``, or ``LABEL_STUDIO_USER_TOKEN``) or a personal access token, which is
exchanged for an access token at ``/api/token/refresh``. Checked against Label Studio 1.23.2.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import UserError

API_KEY_VARIABLE = "LABEL_STUDIO_API_KEY"


class Client:
    """One server (``url``) and one user (``api_key``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        key = api_key or os.environ.get(API_KEY_VARIABLE)
        if not key:
            raise UserError(f"--label-studio-url {url} needs an API key: set {API_KEY_VARIABLE} (Label Studio: "
                            "Account & Settings > Personal Access Token, or a legacy token)")
        self.timeout = timeout
        self.header = f"Token {key}"
        if key.count(".") == 2:  # a personal access token (a JWT refresh token)
            access = self.request("POST", "/api/token/refresh", {"refresh": key}, auth=False)["access"]
            self.header = f"Bearer {access}"

    def request(self, method: str, path: str, body: Any = None, auth: bool = True, raw: bool = False) -> Any:
        """One API call: the decoded JSON answer (``raw``: the bytes)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", self.header)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:  # noqa: S310 (the user's server)
                content = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").replace("\n", " ")
            hint = "check LABEL_STUDIO_API_KEY" if exc.code in (401, 403) else "see the server's log"
            raise UserError(f"Label Studio {self.url} answered {exc.code} to {method} {path} ({detail}): {hint}") \
                from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach Label Studio at {self.url} ({reason}): start it, or fix "
                            "--label-studio-url") from None
        if raw:
            return content
        return json.loads(content) if content else None

    def project(self, title: str, label_config: str) -> dict[str, Any]:
        """The project called ``title`` (created with ``label_config`` when there is none)."""
        found = self.find_project(title)
        if found is not None:
            return found
        return self.request("POST", "/api/projects", {"title": title, "label_config": label_config})

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project called ``title``, or None."""
        page = self.request("GET", "/api/projects?page_size=1000")
        projects = page.get("results", page) if isinstance(page, dict) else page
        return next((p for p in projects if p.get("title") == title), None)

    def attach_local_storage(self, project: int, folder: Path) -> None:
        """Local files storage on ``folder`` (once per project and folder): without it, the server refuses
        to serve the images of the tasks."""
        folder = str(Path(folder).resolve())
        existing = self.request("GET", f"/api/storages/localfiles?project={project}")
        if any(s.get("path") == folder for s in existing):
            return
        self.request("POST", "/api/storages/localfiles", {"project": project, "title": f"simclrv2 {folder}",
                                                         "path": folder, "use_blob_urls": True})

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        """Adds ``tasks`` (predictions included) to the project; the number imported."""
        answer = self.request("POST", f"/api/projects/{project}/import", tasks)
        return int(answer.get("task_count", len(tasks)))

    def export(self, project: int, export_type: str = "JSON") -> bytes:
        """The project's annotations as Label Studio exports them (``JSON``, ``JSON_MIN`` or ``CSV``)."""
        return self.request("GET", f"/api/projects/{project}/export?exportType={export_type}", raw=True)
