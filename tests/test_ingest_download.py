"""Resumable, checksummed downloads, against a loopback HTTP server started in the test (no network)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import DataParams, MLflowParams
from pipeline.data.download import checksum_path, download_file, verify_checksum
from pipeline.data.ingest import run_ingest
from pipeline.data.sources.amazon import AMAZON_FORMATS, amazon_files
from pipeline.errors import DataError

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with Range support; records each request's Range header.

    ``ranges=False`` ignores Range (answers 200 with the whole file); ``truncate_first`` sends only the
    first N bytes of the first response and then closes the connection.
    """

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.ranges = True
        self.truncate_first: int | None = None
        self.seen: list[str | None] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # http.server API
        body = self.server.files.get(self.path)
        range_header = self.headers.get("Range")
        self.server.seen.append(range_header)
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if m and self.server.ranges:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if self.server.truncate_first is not None:
            chunk, self.server.truncate_first = chunk[: self.server.truncate_first], None
            self.wfile.write(chunk)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer({"/data/file.bin": PAYLOAD})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_writes_the_file_and_a_checksum_sidecar(tmp_path: Path, server: FileServer) -> None:
    dest = tmp_path / "raw" / "file.bin"
    assert download_file(server.url("/data/file.bin"), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert checksum_path(dest).read_text() == f"{hashlib.sha256(PAYLOAD).hexdigest()}  file.bin\n"
    assert not dest.with_name("file.bin.part").exists()
    assert server.seen == [None]
    assert verify_checksum(dest) is True


def test_download_resumes_a_partial_file_with_a_range_request(tmp_path: Path, server: FileServer) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:100_000])
    download_file(server.url("/data/file.bin"), dest)
    assert server.seen == ["bytes=100000-"]
    assert dest.read_bytes() == PAYLOAD
    assert checksum_path(dest).read_text().split()[0] == hashlib.sha256(PAYLOAD).hexdigest()


def test_an_interrupted_transfer_is_resumed_on_retry(tmp_path: Path, server: FileServer) -> None:
    server.truncate_first = 50_000
    dest = tmp_path / "file.bin"
    download_file(server.url("/data/file.bin"), dest, retries=2, backoff_s=0.0)
    assert server.seen == [None, "bytes=50000-"]
    assert dest.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_finished_without_refetching(tmp_path: Path, server: FileServer) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    download_file(server.url("/data/file.bin"), dest)
    assert server.seen == [f"bytes={len(PAYLOAD)}-"] and dest.read_bytes() == PAYLOAD


def test_a_server_without_range_support_restarts_from_zero(tmp_path: Path, server: FileServer) -> None:
    server.ranges = False
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"stale bytes")
    download_file(server.url("/data/file.bin"), dest)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_is_verified_on_reuse(tmp_path: Path, server: FileServer) -> None:
    dest = tmp_path / "file.bin"
    download_file(server.url("/data/file.bin"), dest)
    dest.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(DataError, match=r"file\.bin: SHA-256 [0-9a-f]{64} does not match"):
        verify_checksum(dest)
    plain = tmp_path / "placed_by_hand.bin"
    plain.write_bytes(b"x")
    assert verify_checksum(plain) is False  # no sidecar: nothing to verify


def test_download_errors_name_the_url_and_where_to_put_the_file(tmp_path: Path, server: FileServer) -> None:
    with pytest.raises(DataError, match=r"HTTP 404.*put the file at .*missing\.bin by hand"):
        download_file(server.url("/nope"), tmp_path / "missing.bin", retries=0)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(
        DataError, match=rf"cannot download http://127\.0\.0\.1:{port}/data/file\.bin .*by hand"
    ):
        download_file(f"http://127.0.0.1:{port}/data/file.bin", tmp_path / "f.bin", retries=1, backoff_s=0.0)


def test_ingest_downloads_missing_amazon_files(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reviews = [json.dumps({"reviewerID": f"U{u}", "asin": f"B{i}", "unixReviewTime": 10 * u + i})
               for u in range(3) for i in range(3)]  # fmt: skip
    server.files["/cat/reviews_Toy_5.json.gz"] = gzip.compress(("\n".join(reviews) + "\n").encode())
    server.files["/cat/meta_Toy.json.gz"] = gzip.compress(b"{'asin': 'B0', 'title': 'Zero'}\n")
    fmt = dataclasses.replace(
        AMAZON_FORMATS["amazon2014"],
        review_url=server.url("/cat/reviews_{category}_5.json.gz"),
        meta_url=server.url("/cat/meta_{category}.json.gz"),
    )
    monkeypatch.setitem(AMAZON_FORMATS, "amazon2014", fmt)
    data = DataParams(
        source="amazon2014",
        category="Toy",
        raw_dir=str(tmp_path / "raw"),
        download=True,
        kcore=3,
        text_columns=["title"],  # the served metadata has only titles and no images
        image_column=None,
    )
    stats = run_ingest(data, MLflowParams(enabled=False), tmp_path / "processed", tmp_path / "stats.json")
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 9)
    folder = tmp_path / "raw" / "amazon2014"
    assert sorted(p.name for p in folder.iterdir()) == [
        "meta_Toy.json.gz", "meta_Toy.json.gz.sha256", "reviews_Toy_5.json.gz", "reviews_Toy_5.json.gz.sha256"
    ]  # fmt: skip
    # reused (and verified) on the next run, not downloaded again
    n_requests = len(server.seen)
    (reviews_path, kind), meta = amazon_files(fmt, "Toy", folder, download=True)
    assert (reviews_path.name, kind, meta.name) == ("reviews_Toy_5.json.gz", "json", "meta_Toy.json.gz")
    assert len(server.seen) == n_requests
