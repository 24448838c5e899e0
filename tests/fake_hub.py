"""A local HTTP server that answers the Hugging Face hub endpoints huggingface_hub calls for a
download (HF_ENDPOINT points at it): repo info, the file tree, and files with ETag,
X-Repo-Commit and Range. It serves real files from local folders and logs every request."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "c0ffee" * 6 + "abcd"  # 40 hex digits


@dataclass
class FakeRepo:
    folder: Path
    parameters: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # claimed sizes overriding the real ones

    def files(self) -> dict[str, Path]:
        return {p.name: p for p in sorted(self.folder.iterdir()) if p.is_file()}

    def size(self, name: str) -> int:
        return self.sizes.get(name, self.files()[name].stat().st_size)


class FakeHub:
    """Start with ``with FakeHub(repos) as hub:``; ``hub.url`` is the HF_ENDPOINT."""

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.stall_after: dict[str, int] = {}  # file -> bytes sent before the first GET stalls
        self.release = threading.Event()
        self._etags: dict[Path, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def file_requests(self) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if "/resolve/" in entry[1]]

    def _etag(self, path: Path) -> str:
        if path not in self._etags:
            self._etags[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._etags[path]

    def _handle(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.log.append((request.command, path, request.headers.get("Range")))
        for repo_id, repo in self.repos.items():
            if path in (f"/api/models/{repo_id}", f"/api/models/{repo_id}/revision/main",
                        f"/api/models/{repo_id}/revision/{COMMIT}"):
                return self._json(request, self._info(repo_id, repo))
            if path.startswith(f"/api/models/{repo_id}/tree/"):
                return self._json(request, [self._entry(repo, n) for n in repo.files()])
            for revision in ("main", COMMIT):
                prefix = f"/{repo_id}/resolve/{revision}/"
                if path.startswith(prefix) and path[len(prefix):] in repo.files():
                    return self._file(request, repo.files()[path[len(prefix):]], head)
        self._json(request, {"error": "Repository not found"}, status=404)

    def _info(self, repo_id: str, repo: FakeRepo) -> dict[str, object]:
        info: dict[str, object] = {
            "id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "gated": False,
            "siblings": [{"rfilename": n, "size": repo.size(n)} for n in repo.files()],
        }
        if repo.parameters:
            info["safetensors"] = {"parameters": {"F32": repo.parameters}, "total": repo.parameters}
        return info

    def _entry(self, repo: FakeRepo, name: str) -> dict[str, object]:
        return {"type": "file", "path": name, "size": repo.size(name), "oid": "0" * 40}

    def _json(self, request: BaseHTTPRequestHandler, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        if status == 404:
            request.send_header("X-Error-Code", "RepoNotFound")
        request.end_headers()
        request.wfile.write(data)

    def _file(self, request: BaseHTTPRequestHandler, path: Path, head: bool) -> None:
        data = path.read_bytes()
        start = 0
        ranged = request.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start = int(ranged[len("bytes="):].split("-")[0])
        body = data[start:]
        request.send_response(206 if start else 200)
        request.send_header("ETag", f'"{self._etag(path)}"')
        request.send_header("X-Repo-Commit", COMMIT)
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("Content-Length", str(len(body)))
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if head:
            return
        stall = self.stall_after.pop(path.name, None)
        try:
            if stall is None:
                request.wfile.write(body)
                return
            request.wfile.write(body[:stall])
            request.wfile.flush()
            self.release.wait(120)  # hold the connection open: a download cut off mid-file
        except (BrokenPipeError, ConnectionResetError):
            pass
