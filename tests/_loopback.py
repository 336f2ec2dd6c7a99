"""A loopback image server for download tests: good JPEGs, 404s, time-outs, HTML pages, truncated JPEGs and
opt-out headers, on 127.0.0.1 (threaded; nothing leaves the machine)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _webdata import jpeg_bytes

KINDS = ("good", "missing", "slow", "html", "trunc", "optout")


class _Handler(BaseHTTPRequestHandler):
    delay = 0.0

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        kind, _, name = self.path.strip("/").partition("/")
        n = int(name.split(".")[0]) if name.split(".")[0].isdigit() else 0
        time.sleep(self.delay)
        if kind == "good":
            self._send(200, jpeg_bytes(n, (96 + n % 7, 72)), "image/jpeg")
        elif kind == "optout":
            self._send(200, jpeg_bytes(n), "image/jpeg", {"X-Robots-Tag": "noai"})
        elif kind == "html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif kind == "trunc":
            data = jpeg_bytes(n)
            self._send(200, data[: len(data) // 4], "image/jpeg")
        elif kind == "slow":
            time.sleep(4)
            self._send(200, jpeg_bytes(n), "image/jpeg")
        else:
            self._send(404, b"not found", "text/plain")


def serve(delay: float = 0.0):
    """Start the server; returns (server, base URL). Stop with ``server.shutdown()``."""
    handler = type("Handler", (_Handler,), {"delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def write_url_list(path, base: str, counts: dict[str, int]) -> list[tuple[str, str]]:
    """A tsv with header ``url<TAB>caption``; rows interleave the kinds. Returns (url, caption) rows."""
    rows = []
    for kind in KINDS:
        for i in range(counts.get(kind, 0)):
            rows.append((f"{base}/{kind}/{i}.jpg", f"{kind} picture {i}"))
    rows.sort(key=lambda r: hash(r[0]) % 997)
    path.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in rows))
    return rows
