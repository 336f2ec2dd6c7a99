"""A loopback HTTP server (127.0.0.1) that plays a release host (plain files, HTTP Range) and the Hugging
Face Hub's file endpoints (``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{filename}`` with the
``X-Repo-Commit``, ``ETag`` and ``Content-Length`` headers huggingface_hub reads, ``X-Error-Code`` on a 404),
with faults to order: drop the connection half-way through a file, or serve other bytes than registered."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class ReleaseServer:
    """Files by URL path, plus fault knobs; ``requests`` logs (method, path, Range header)."""

    files: dict[str, bytes] = field(default_factory=dict)
    hub: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo_id -> {filename: bytes}
    drops: dict[str, int] = field(default_factory=dict)  # path -> GETs still to cut off half-way
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def body(self, path: str) -> tuple[bytes | None, dict[str, str]]:
        """(bytes, extra headers) served at ``path``; None when nothing is there."""
        m = _RESOLVE.match(path)
        if m is None:
            return self.files.get(path), {}
        repo = self.hub.get(m["repo"])
        if repo is None:
            return None, {"X-Error-Code": "RepoNotFound"}
        data = repo.get(m["file"])
        if data is None:
            return None, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
        etag = hashlib.sha256(data).hexdigest()
        return data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}


def _handler(server: ReleaseServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _serve(self, head: bool) -> None:
            path = self.path.split("?")[0]
            rng = self.headers.get("Range", "")
            server.requests.append((self.command, path, rng))
            data, extra = server.body(path)
            if data is None:
                self.send_response(404)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(rng[len("bytes=") :].split("-")[0]) if rng.startswith("bytes=") else 0
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            for k, v in extra.items():
                self.send_header(k, v)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            chunk = data[start:]
            if server.drops.get(path, 0) > 0:
                server.drops[path] -= 1
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the rest never comes
                return
            self.wfile.write(chunk)

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

    return Handler


def start(server: ReleaseServer) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``server`` on a free port of 127.0.0.1 in a daemon thread (sets ``server.port``)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread
