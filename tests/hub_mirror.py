"""A local Hugging Face hub mirror: a real HTTP server on a loopback port speaking the part of the hub's API that
`huggingface_hub` uses to resolve a revision, read configs and safetensors headers and download a snapshot.

Point `HF_ENDPOINT` at `HubMirror.url` (in the process that imports huggingface_hub: its constants are read at
import). Routes, as the hub serves them:

    GET  /api/models/{repo}/revision/{rev}           model info: id, sha, siblings (RevisionNotFound / RepoNotFound)
    GET  /api/models/{repo}/tree/{rev}?recursive=…   the file list: path, size, oid, lfs {oid, size, pointerSize}
    HEAD /{repo}/resolve/{rev}/{file}                X-Repo-Commit, ETag / X-Linked-Etag, Content-Length / X-Linked-Size
    GET  /{repo}/resolve/{rev}/{file}                the bytes; `Range: bytes=a-b` answers 206 with Content-Range

Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub maps to its
exception classes. `requests` records the paths asked for, so a test can see what was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class MirrorRepo:
    """One model repository: files by commit, and refs (branch or tag → commit)."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)

    @staticmethod
    def files_of(directory: Path) -> dict[str, bytes]:
        """A checkpoint directory's files (top level), as a commit's content."""
        return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


class HubMirror:
    """`with HubMirror(repos) as hub:` serves `repos` ({"org/name": MirrorRepo}) at `hub.url` until the block ends."""

    def __init__(self, repos: dict[str, MirrorRepo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror._answer(self, body=True)

            def do_HEAD(self) -> None:
                mirror._answer(self, body=False)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubMirror:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- routes ---------------------------------------------------------------------------------------------

    def _answer(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/.*)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if api is not None:
            self._api(request, api.group(1), api.group(2), api.group(3), body=body)
        elif resolve is not None:
            self._resolve(request, resolve.group(1), resolve.group(2), resolve.group(3), body=body)
        else:
            self._error(request, 404, "RepoNotFound", body=body)

    def _commit(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, body: bool) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", body=body)
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(request, 404, "RevisionNotFound", body=body)
        return commit

    def _api(
        self, request: BaseHTTPRequestHandler, repo_id: str, kind: str, revision: str, *, body: bool
    ) -> None:
        commit = self._commit(request, repo_id, revision, body)
        if commit is None:
            return
        files = self.repos[repo_id].commits[commit]
        if kind == "revision":
            data: object = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        else:
            data = [_tree_entry(name, content) for name, content in sorted(files.items())]
        self._send(request, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body=body)

    def _resolve(
        self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, name: str, *, body: bool
    ) -> None:
        commit = self._commit(request, repo_id, revision, body)
        if commit is None:
            return
        content = self.repos[repo_id].commits[commit].get(name)
        if content is None:
            self._error(request, 404, "EntryNotFound", body=body)
            return
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "ETag": f'"{_git_blob_id(content)}"'}
        if name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(content).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(content))
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if wanted is not None and body:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2)) if wanted.group(2) else len(content) - 1, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            self._send(request, 206, content[start : end + 1], headers, body=body)
            return
        self._send(request, 200, content, headers, body=body)

    def _error(self, request: BaseHTTPRequestHandler, status: int, code: str, *, body: bool) -> None:
        payload = json.dumps({"error": code}).encode()
        self._send(
            request, status, payload, {"X-Error-Code": code, "Content-Type": "application/json"}, body=body
        )

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str], *, body: bool
    ) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if body:
            request.wfile.write(payload)


def _git_blob_id(content: bytes) -> str:
    """The git object id of a file: what the hub reports as a non-LFS file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _tree_entry(name: str, content: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "file",
        "path": name,
        "size": len(content),
        "oid": _git_blob_id(content),
    }
    if name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
    return entry
