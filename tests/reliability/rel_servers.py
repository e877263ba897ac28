"""A scriptable HTTP server on a loopback address for the reliability tests (never reachable from outside).

Routes (``self.files`` adds more, path -> bytes):

- ``/drip-body``: 200 with ``Content-Length: 100000``, then one byte every ``drip_s`` seconds;
- ``/drip-headers``: the status line, then one header byte every ``drip_s`` seconds (never ends the headers);
- ``/short``: ``Content-Length: 1000`` but 10 bytes, then the connection closes;
- ``/unsized``: ``big_size`` bytes with no Content-Length (the body ends when the connection closes);
- ``/redirect?to=<url>``: 302 to ``<url>``;
- anything in ``files``: 200 with its bytes; else 404.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self, host: str = "127.0.0.1", drip_s: float = 0.1, big_size: int = 5000) -> None:
        self.hits: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.drip_s = drip_s
        self.big_size = big_size
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # http.server's API
                path, _, query = self.path.partition("?")
                server.hits[path] += 1
                # the client giving up (BrokenPipe, reset) is what the slow routes expect
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._route(path, urllib.parse.parse_qs(query))

            def _drip(self, byte: bytes) -> None:
                while not server.stop.is_set():
                    self.wfile.write(byte)
                    self.wfile.flush()
                    time.sleep(server.drip_s)

            def _route(self, path: str, query: dict[str, list[str]]) -> None:
                if path == "/drip-body":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self._drip(b"x")
                elif path == "/drip-headers":
                    self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                    self._drip(b"a")
                elif path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                elif path == "/unsized":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"z" * server.big_size)
                    self.close_connection = True
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path in server.files:
                    body = server.files[path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
