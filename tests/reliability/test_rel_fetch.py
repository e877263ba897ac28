"""Reliability of image fetching and decoding (issue 15, items 1 and 7): slow hosts, private addresses,
local paths outside the allowed folders, decompression bombs, damaged cache blobs and truncated bodies."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from rel_servers import LoopbackServer

from pipeline import http as pipeline_http
from pipeline.config import MLflowParams, Params, with_overrides
from pipeline.io import read_json, write_parquet
from pipeline.teachers.embed import run_embed
from pipeline.teachers.fetch import TOTAL_TIMEOUT_FACTOR, fetch_images, resolve_source
from pipeline.teachers.image import MAX_IMAGE_PIXELS, decode_image

PNG_BYTES = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0"
    "00000301010018dd8db00000000049454e44ae426082"
)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(drip_s=0.1)
    srv.files["/ok.png"] = PNG_BYTES
    yield srv
    srv.close()


# --------------------------------------------------------------------------------------------- 1. hang
@pytest.mark.parametrize("route", ["/drip-body", "/drip-headers"])
def test_slow_drip_server_is_cut_off_at_six_timeouts(
    tmp_path: Path, server: LoopbackServer, route: str
) -> None:
    """A server sending a byte every 0.1 s (each read well within the 0.3 s timeout) used to hold the
    worker for ever; now one source, retries included, takes at most fetch_timeout_s x 6."""
    timeout_s = 0.3
    start = time.monotonic()
    got = resolve_source(
        f"{server.url}{route}", tmp_path, timeout_s=timeout_s, retries=2, allow_private_hosts=True
    )
    elapsed = time.monotonic() - start
    assert got.failure == "timeout" and got.path is None
    assert "total limit" in got.detail
    assert elapsed < TOTAL_TIMEOUT_FACTOR * timeout_s + 0.5, elapsed  # 1.8 s plus scheduling slack
    assert server.hits[route] == 1  # the total budget is spent: no retry past the limit
    assert not (tmp_path / "urls").exists()  # nothing cached


def test_one_slow_host_does_not_hold_the_other_fetches(tmp_path: Path, server: LoopbackServer) -> None:
    start = time.monotonic()
    got = fetch_images(
        [f"{server.url}/drip-body", f"{server.url}/ok.png"],
        tmp_path,
        timeout_s=0.2,
        retries=0,
        workers=2,
        allow_private_hosts=True,
    )
    assert [g.failure for g in got] == ["timeout", None]
    assert time.monotonic() - start < TOTAL_TIMEOUT_FACTOR * 0.2 + 0.5


# --------------------------------------------------------------------------------------------- 7. private hosts
def test_url_to_loopback_or_private_address_is_refused(tmp_path: Path, server: LoopbackServer) -> None:
    got = resolve_source(f"{server.url}/ok.png", tmp_path, timeout_s=1, retries=2)  # default: refused
    assert got.failure == "private_host"
    assert "127.0.0.1" in got.detail and "embed.image.allow_private_hosts" in got.detail
    assert server.hits["/ok.png"] == 0  # never connected
    for url in (
        "http://localhost:9/x.png",
        "http://[::1]:9/x.png",
        "http://169.254.169.254/latest/meta-data",
    ):
        assert resolve_source(url, tmp_path, timeout_s=1, retries=0).failure == "private_host", url
    allowed = resolve_source(
        f"{server.url}/ok.png", tmp_path, timeout_s=1, retries=0, allow_private_hosts=True
    )
    assert allowed.failure is None and allowed.sha256 == hashlib.sha256(PNG_BYTES).hexdigest()


def test_redirect_to_a_private_address_is_refused(
    tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs on every connection, so a public host cannot redirect the fetch inland."""
    inner = LoopbackServer(host="127.0.0.2")
    inner.files["/secret.png"] = PNG_BYTES
    try:
        # stand-in for the internet: 127.0.0.1 (the redirecting server) counts as public, 127.0.0.2 does not
        monkeypatch.setattr(pipeline_http, "public_address", lambda ip: str(ip) == "127.0.0.1")
        got = resolve_source(
            f"{server.url}/redirect?to={inner.url}/secret.png", tmp_path, timeout_s=1, retries=0
        )
        assert got.failure == "private_host" and "127.0.0.2" in got.detail
        assert server.hits["/redirect"] == 1 and inner.hits["/secret.png"] == 0
    finally:
        inner.close()


def test_public_address_policy() -> None:
    import ipaddress

    public = ["8.8.8.8", "2606:4700:4700::1111"]
    private = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"]  # fmt: skip
    assert all(pipeline_http.public_address(ipaddress.ip_address(a)) for a in public)
    assert not any(pipeline_http.public_address(ipaddress.ip_address(a)) for a in private)


# --------------------------------------------------------------------------------------------- 7. local paths
@dataclass
class FakeImageTeacher:
    """Stands in for the timm teacher (no model load): every decodable file gets the same vector."""

    name: str = "fake"
    source: str = "test"
    device: str = "cpu"
    dim: int = 4
    fingerprint: str = "f" * 64
    modality: str = "image"
    preprocessing: dict = field(default_factory=dict)

    def encode(self, paths: list[Path], batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
        return np.ones((len(paths), self.dim), dtype=np.float32), {}


def test_local_image_paths_outside_the_root_are_refused_and_counted_missing(
    tmp_path: Path, base_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    (raw / "img" / "ok.png").write_bytes(PNG_BYTES)
    secret = tmp_path / "secret.png"  # outside the root
    secret.write_bytes(PNG_BYTES)
    (raw / "img" / "link.png").symlink_to(secret)
    sources = [
        str(raw / "img" / "ok.png"),  # 1 inside: used
        str(raw / "img" / ".." / ".." / "secret.png"),  # 2 climbs out with ..
        str(secret),  # 3 absolute path outside
        secret.as_uri(),  # 4 file:// URL outside
        str(raw / "img" / "link.png"),  # 5 a symlink inside that points outside
        (raw / "img" / "ok.png").as_uri(),  # 6 file:// URL inside: used
    ]
    items = tmp_path / "items.parquet"
    write_parquet(
        items,
        {
            "item": pa.array(range(1, 7), pa.int32()),
            "item_id": [f"I{i}" for i in range(1, 7)],
            "text": ["t"] * 6,
            "image": sources,
        },
    )
    monkeypatch.setattr("pipeline.teachers.image.load_image_teacher", lambda *a, **k: FakeImageTeacher())
    params = with_overrides(
        base_params,
        {"embed.device": "cpu", "embed.cache_dir": str(tmp_path / "cache"), "embed.min_coverage": 0.3},
    ).embed
    run_embed(params, ["image"], MLflowParams(enabled=False), items, tmp_path / "out", image_roots=[raw])
    entry = read_json(tmp_path / "out" / "report.json")["modalities"]["image"]
    assert entry["missing_by_kind"] == {"outside_root": 4}
    assert entry["usable"] == 2 and entry["missing"] == 4
    details = [e["detail"] for e in entry["missing_examples"]["outside_root"]]
    assert all("outside the allowed image folder(s)" in d and "embed.image.local_root" in d for d in details)
    assert [e["item_id"] for e in entry["missing_examples"]["outside_root"]] == ["I2", "I3", "I4", "I5"]


# --------------------------------------------------------------------------------------------- 7. pixel bomb
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_blank_png(path: Path, width: int, height: int) -> None:
    """A 1-bit greyscale PNG of width x height blank pixels, compressed to a few hundred KB."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _huge_blank_png(bomb, 13_000, 13_000)  # 169 megapixels
    assert bomb.stat().st_size < 1_000_000
    start = time.monotonic()
    with pytest.raises(Image.DecompressionBombError, match=r"13000 x 13000 = 169\.0 megapixels exceeds"):
        decode_image(bomb)
    assert time.monotonic() - start < 1.0  # refused from the header: nothing was decoded
    assert MAX_IMAGE_PIXELS < 169_000_000
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(small)
    assert decode_image(small).size == (64, 48)


# --------------------------------------------------------------------------------------------- 7. url cache
def test_damaged_cache_blob_is_fetched_again(tmp_path: Path, server: LoopbackServer) -> None:
    url = f"{server.url}/ok.png"
    first = resolve_source(url, tmp_path, timeout_s=1, retries=0, allow_private_hosts=True)
    assert first.failure is None and server.hits["/ok.png"] == 1
    first.path.write_bytes(PNG_BYTES[:20])  # truncated on disk
    again = resolve_source(url, tmp_path, timeout_s=1, retries=0, allow_private_hosts=True)
    assert again == first and again.path.read_bytes() == PNG_BYTES
    assert server.hits["/ok.png"] == 2  # re-fetched, not served from the damaged blob
    third = resolve_source(url, tmp_path, timeout_s=1, retries=0, allow_private_hosts=True)
    assert third == first and server.hits["/ok.png"] == 2  # an intact blob is reused


def test_truncated_body_is_not_cached(tmp_path: Path, server: LoopbackServer) -> None:
    got = resolve_source(f"{server.url}/short", tmp_path, timeout_s=1, retries=1, allow_private_hosts=True)
    assert got.failure == "truncated" and "got 10 of 1000 announced bytes" in got.detail
    assert "after 2 attempts" in got.detail and server.hits["/short"] == 2
    assert not (tmp_path / "urls").exists() and not (tmp_path / "blobs").exists()
