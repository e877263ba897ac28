"""Image fetching (loopback HTTP server, local paths, file URLs) and the content-hash vector cache."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pipeline.teachers.cache import VectorCache, content_key
from pipeline.teachers.fetch import fetch_images, resolve_source

PNG_BYTES = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0"
    "00000301010018dd8db00000000049454e44ae426082"
)


class LoopbackServer:
    """A tiny HTTP server on 127.0.0.1: /ok.png, /big, /error500, /redirect-{file,ftp}, /hang; others 404."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's API
                server.hits[self.path] += 1
                if self.path == "/hang":
                    server.release.wait(10)  # never answers within the test's timeout
                    return
                if self.path.startswith("/redirect-"):  # /redirect-file, /redirect-ftp
                    target = {"file": "file:///etc/hostname", "ftp": "ftp://127.0.0.1/x.png"}[self.path[10:]]
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                status, body = {
                    "/ok.png": (200, PNG_BYTES),
                    "/big": (200, b"x" * 5000),
                    "/error500": (500, b"boom"),
                }.get(self.path.split("?")[0], (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    yield srv
    srv.close()


def test_download_lands_in_content_addressed_cache_and_is_not_refetched(
    tmp_path: Path, server: LoopbackServer
) -> None:
    url = f"{server.url}/ok.png"
    got = resolve_source(url, tmp_path, timeout_s=2, retries=0, allow_private_hosts=True)
    digest = hashlib.sha256(PNG_BYTES).hexdigest()
    assert got.failure is None and got.sha256 == digest
    assert got.path == tmp_path / "blobs" / digest[:2] / digest
    assert got.path.read_bytes() == PNG_BYTES
    before = server.hits["/ok.png"]
    again = resolve_source(url, tmp_path, timeout_s=2, retries=0, allow_private_hosts=True)
    assert again == got and server.hits["/ok.png"] == before  # served from the cache, no request


def test_http_404_is_not_retried_and_500_is(tmp_path: Path, server: LoopbackServer) -> None:
    got = resolve_source(
        f"{server.url}/missing.jpg", tmp_path, timeout_s=2, retries=2, allow_private_hosts=True
    )
    assert (got.failure, got.path) == ("http_error", None)
    assert "HTTP 404" in got.detail and server.hits["/missing.jpg"] == 1
    got = resolve_source(f"{server.url}/error500", tmp_path, timeout_s=2, retries=1, allow_private_hosts=True)
    assert got.failure == "http_error" and "HTTP 500" in got.detail and "after 2 attempts" in got.detail
    assert server.hits["/error500"] == 2


def test_hanging_server_times_out(tmp_path: Path, server: LoopbackServer) -> None:
    start = time.monotonic()
    got = resolve_source(f"{server.url}/hang", tmp_path, timeout_s=0.3, retries=1, allow_private_hosts=True)
    elapsed = time.monotonic() - start
    assert got.failure == "timeout" and "after 2 attempts" in got.detail
    assert 0.6 <= elapsed < 3.0  # two attempts of 0.3 s plus a 0.25 s back-off
    assert server.hits["/hang"] == 2


def test_unreachable_too_large_bad_scheme_and_redirect_to_file(
    tmp_path: Path, server: LoopbackServer
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = resolve_source(
        f"http://127.0.0.1:{port}/x.png", tmp_path, timeout_s=1, retries=0, allow_private_hosts=True
    )
    assert got.failure == "unreachable"
    got = resolve_source(
        f"{server.url}/big", tmp_path, timeout_s=2, retries=2, max_bytes=1024, allow_private_hosts=True
    )
    assert got.failure == "too_large" and server.hits["/big"] == 1
    assert resolve_source("ftp://example.com/a.png", tmp_path).failure == "bad_url"
    assert resolve_source("file://otherhost/a.png", tmp_path).failure == "bad_url"
    for target in ("file", "ftp"):  # redirects may only lead to http(s)
        got = resolve_source(
            f"{server.url}/redirect-{target}", tmp_path, timeout_s=2, retries=0, allow_private_hosts=True
        )
        assert got.failure == "http_error" and "HTTP 302" in got.detail, got.detail


def test_local_paths_and_file_urls(tmp_path: Path) -> None:
    img = tmp_path / "a b.png"
    img.write_bytes(PNG_BYTES)
    digest = hashlib.sha256(PNG_BYTES).hexdigest()
    assert resolve_source(str(img), tmp_path / "c") == resolve_source(img.as_uri(), tmp_path / "c")
    assert resolve_source(str(img), tmp_path / "c").sha256 == digest
    assert not (tmp_path / "c").exists()  # local files are read in place, not copied
    assert resolve_source(str(tmp_path / "nope.png"), tmp_path).failure == "file_not_found"
    assert resolve_source(str(tmp_path), tmp_path).failure == "unreadable_file"  # a directory
    assert resolve_source(str(img), tmp_path, max_bytes=10).failure == "too_large"
    assert resolve_source(None, tmp_path).failure == "no_image"
    assert resolve_source("  ", tmp_path).failure == "no_image"


def test_fetch_images_keeps_order_and_fetches_each_source_once(
    tmp_path: Path, server: LoopbackServer
) -> None:
    url = f"{server.url}/ok.png?once"
    local = tmp_path / "x.png"
    local.write_bytes(PNG_BYTES)
    got = fetch_images(
        [url, None, url, str(local), f"{server.url}/gone"],
        tmp_path / "cache",
        timeout_s=2,
        retries=0,
        workers=3,
        allow_private_hosts=True,  # the test server is on 127.0.0.1
    )
    assert [g.failure for g in got] == [None, "no_image", None, None, "http_error"]
    assert got[0] == got[2] and got[0].sha256 == got[3].sha256
    assert server.hits["/ok.png?once"] == 1


# --------------------------------------------------------------------------------------------- vector cache
def test_cache_round_trip_is_bit_exact_and_remembers_failures(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 7)).astype(np.float32)
    keys = [content_key("fp", f"item {i}".encode()) for i in range(5)]
    cache = VectorCache(tmp_path, "text", "f" * 64, dim=7)
    cache.put(keys[:4], vectors[:4])
    cache.put_failure(keys[4], "not an image")
    cache.flush()

    reread = VectorCache(tmp_path, "text", "f" * 64, dim=7)
    assert len(reread) == 5
    for k, v in zip(keys[:4], vectors[:4], strict=True):
        assert reread.get(k).tobytes() == v.tobytes()
    assert reread.get(keys[4]) == "not an image"
    assert reread.get(content_key("fp", b"other")) is None
    assert len(VectorCache(tmp_path, "text", "e" * 64, dim=7)) == 0  # another fingerprint: another folder
    assert len(VectorCache(tmp_path, "text", "f" * 64, dim=8)) == 0  # wrong dimension: ignored


def test_cache_compacts_parts_and_skips_corrupt_ones(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "image", "a" * 64, dim=2, max_parts=2)
    for i in range(4):
        cache.put([content_key("fp", bytes([i]))], np.full((1, 2), i, dtype=np.float32))
        cache.flush()
    parts = sorted(cache.dir.glob("part-*.parquet"))
    assert len(parts) == 2  # the third flush compacted three parts into one, the fourth added one
    (cache.dir / "part-zzzz.parquet").write_bytes(b"not parquet")
    reread = VectorCache(tmp_path, "image", "a" * 64, dim=2)
    assert len(reread) == 4
    assert reread.get(content_key("fp", bytes([3]))).tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="float32 vectors of shape"):
        reread.put([b"k" * 32], np.zeros((1, 3), dtype=np.float32))
