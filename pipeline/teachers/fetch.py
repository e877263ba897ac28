"""Image sources to local bytes: local paths, ``file://`` and ``http(s)://`` URLs.

Downloads land in a content-addressed cache under ``<cache_dir>``::

    blobs/<sha[:2]>/<sha256 of the bytes>     the downloaded bytes
    urls/<sha256 of the URL>                  the sha256 of the bytes that URL gave

so a rerun reads a URL it fetched before from disk without touching the network, and identical images
behind different URLs are stored once; a reused blob is checked against its recorded length and digest
(a damaged one is fetched again). Local files are read in place (not copied). Failed fetches are not
cached: the next run tries them again.

Safety: local paths and ``file://`` URLs must resolve (symlinks and ``..`` followed) inside the allowed
folders (``local_roots``); URL fetches connect only to public addresses unless ``allow_private_hosts``
(the check runs on the address actually connected to, so it holds after every redirect and against DNS
rebinding); one download, retries included, never takes more than ``TOTAL_TIMEOUT_FACTOR x timeout_s``:
a watchdog closes the connection at that deadline, so a server that trickles bytes cannot hold a worker.

A source that cannot be turned into bytes yields an :class:`ImageSource` with a ``failure`` kind instead of
raising, so one bad item never stops the stage. Kinds: ``no_image`` (null or empty), ``bad_url`` (scheme
other than http/https/file), ``outside_root`` (a local path outside the allowed folders), ``private_host``
(a URL that leads to a loopback/private/link-local address), ``file_not_found``, ``unreadable_file``,
``too_large`` (over ``max_bytes``), ``http_error`` (an HTTP error status), ``timeout`` (no answer, or the
total deadline passed), ``truncated`` (fewer bytes than announced) and ``unreachable`` (connection failures).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import ipaddress
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import atomic_path, file_digest
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

USER_AGENT = "kdsr-pipeline/0.1 (image teacher)"
# One source (every attempt and back-off included) is abandoned after this many timeouts in total, however
# its server trickles bytes (a watchdog closes the connection at the deadline).
TOTAL_TIMEOUT_FACTOR = 6.0
_CHUNK = 1 << 16
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ImageSource:
    """Where an item's image bytes are, or why there are none.

    Attributes:
        path: A local file holding the bytes (the original file or the download cache blob); None on failure.
        sha256: Hex digest of the bytes; None on failure.
        failure: Failure kind (see the module docstring); None when ``path`` is set.
        detail: Human-readable reason for a failure (status code, OS error), for logs and reports.
    """

    path: Path | None = None
    sha256: str | None = None
    failure: str | None = None
    detail: str = ""


class _FetchFailure(Exception):
    def __init__(self, kind: str, detail: str, retryable: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's API
        if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to non-http(s) URL {newurl!r} refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, reserved, ...)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _Guard:
    """One download's policy and deadline: which addresses it may connect to, and a watchdog that shuts its
    sockets down when the deadline passes (a blocked read then returns at once, whatever the server does)."""

    def __init__(self, allow_private: bool, seconds: float) -> None:
        self.allow_private = allow_private
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Guard:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_host(self, host: str | None, port: int | None = None) -> list[tuple]:
        """Resolve ``host``; refuse it (``private_host``) when any of its addresses is not public."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not self.allow_private:
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                if not public_address(ip):
                    raise _FetchFailure(
                        "private_host",
                        f"host {host} resolves to {ip}, which is not a public address "
                        "(embed.image.allow_private_hosts: true allows it)",
                        False,
                    )
        return infos

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
        *,
        check: bool = True,
    ) -> socket.socket:
        """``socket.create_connection`` that refuses non-public addresses (when ``check``) and registers the
        socket with the watchdog."""
        host, port = address
        infos = (
            self.check_host(host, port) if check else socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            with self._lock:
                if self.expired:
                    sock.close()
                    raise TimeoutError("deadline passed")
                self._sockets.append(sock)
            try:
                left = max(self.remaining(), 0.001)
                sock.settimeout(left if timeout is None else min(timeout, left))
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                if timeout is not None:
                    sock.settimeout(timeout)
                return sock
            except OSError as err:
                last = err
                sock.close()
        raise last if last is not None else OSError(f"cannot resolve {host}")

    def connection_factory(self, base: type, req: urllib.request.Request) -> Callable[..., object]:
        """An ``http.client`` connection class for ``req`` whose sockets go through :meth:`create_connection`.

        Through a proxy the connection goes to the proxy (the user's own), so the target host is checked
        by name here instead."""
        proxied = req.has_proxy() or bool(getattr(req, "_tunnel_host", None))
        if proxied:
            self.check_host(urllib.parse.urlsplit(req.full_url).hostname)

        def factory(host: str, **kwargs: object) -> object:
            conn = base(host, **kwargs)
            conn._create_connection = functools.partial(self.create_connection, check=not proxied)
            return conn

        return factory


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.guard.connection_factory(http.client.HTTPConnection, req), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            self.guard.connection_factory(http.client.HTTPSConnection, req),
            req,
            context=self._context,
            check_hostname=self._check_hostname,
        )


def within_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path`` (made absolute, symlinks and ``..`` resolved) lies inside one of ``roots``."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return any(resolved.is_relative_to(Path(root).resolve(strict=False)) for root in roots)


def _local_source(path: Path, max_bytes: int, roots: Sequence[Path] | None = None) -> ImageSource:
    if roots is not None and not within_roots(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        return ImageSource(
            failure="outside_root",
            detail=f"{path}: outside the allowed image folder(s) {allowed} (embed.image.local_root)",
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        return ImageSource(failure="file_not_found", detail=f"{path}: no such file")
    except OSError as err:
        return ImageSource(failure="unreadable_file", detail=f"{path}: {err.strerror or err}")
    if not path.is_file():
        return ImageSource(failure="unreadable_file", detail=f"{path}: not a regular file")
    if st.st_size > max_bytes:
        return ImageSource(failure="too_large", detail=f"{path}: {st.st_size} bytes > limit {max_bytes}")
    try:
        digest = file_digest(path)
    except OSError as err:
        return ImageSource(failure="unreadable_file", detail=f"{path}: {err.strerror or err}")
    return ImageSource(path=path, sha256=digest)


def _http_get(
    url: str, timeout_s: float, max_bytes: int, budget_s: float, allow_private: bool = False
) -> bytes:
    """One GET attempt of at most ``budget_s`` seconds in all (a watchdog closes the connection then);
    raises :class:`_FetchFailure` with a kind and whether a retry may help."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _Guard(allow_private, budget_s) as guard:
        opener = urllib.request.build_opener(
            _HTTPOnlyRedirects, _GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard)
        )
        try:
            return _read_body(opener, request, timeout_s, max_bytes, guard)
        except _FetchFailure:
            raise
        except Exception as err:
            if guard.expired:
                raise _FetchFailure(
                    "timeout", f"no complete answer within {guard.seconds:.3g} s (total limit)", False
                ) from None
            failure = _classify(err, timeout_s)
            if failure is None:
                raise
            raise failure from None


def _read_body(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    timeout_s: float,
    max_bytes: int,
    guard: _Guard,
) -> bytes:
    with opener.open(request, timeout=timeout_s) as resp:
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            raise _FetchFailure("too_large", f"Content-Length {length} > limit {max_bytes}", False)
        buf = bytearray()
        while chunk := resp.read1(_CHUNK):  # one socket read at a time: the deadline is checked between them
            buf += chunk
            if len(buf) > max_bytes:
                raise _FetchFailure("too_large", f"more than {max_bytes} bytes", False)
            if guard.expired or guard.remaining() <= 0:
                break
        if guard.expired or guard.remaining() <= 0:
            raise _FetchFailure(
                "timeout",
                f"download took over {guard.seconds:.3g} s (total limit); got {len(buf)} bytes",
                False,
            )
        if expected is not None and len(buf) != expected:
            raise _FetchFailure("truncated", f"got {len(buf)} of {expected} announced bytes", True)
        return bytes(buf)


def _classify(err: Exception, timeout_s: float) -> _FetchFailure | None:
    """The failure kind of a urllib/http.client/socket error (None for anything else: a bug, re-raised)."""
    if isinstance(err, urllib.error.HTTPError):
        return _FetchFailure(
            "http_error", f"HTTP {err.code} {err.reason}", err.code >= 500 or err.code == 429
        )
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, TimeoutError):
            return _FetchFailure("timeout", f"no response within {timeout_s:g} s", True)
        return _FetchFailure("unreachable", str(err.reason), True)
    if isinstance(err, TimeoutError):
        return _FetchFailure("timeout", f"no response within {timeout_s:g} s", True)
    if isinstance(err, http.client.HTTPException | OSError):
        return _FetchFailure("unreachable", f"{type(err).__name__}: {err}", True)
    if isinstance(err, ValueError):  # e.g. a URL urllib cannot parse (bad port, control characters)
        return _FetchFailure("bad_url", str(err), False)
    return None


def _cached(url_key: Path, cache_dir: Path) -> ImageSource | None:
    """The blob a URL gave before, when it is still intact (its length and digest match the record)."""
    if not url_key.is_file():
        return None
    fields = url_key.read_text().split()
    digest = fields[0] if fields else ""
    blob = cache_dir / "blobs" / digest[:2] / digest
    try:
        intact = (
            re.fullmatch(r"[0-9a-f]{64}", digest) is not None
            and (len(fields) < 2 or blob.stat().st_size == int(fields[1]))
            and file_digest(blob) == digest
        )
    except (OSError, ValueError):
        intact = False
    if intact:
        return ImageSource(path=blob, sha256=digest)
    log.warning("image cache: %s is missing or damaged; fetching its URL again", blob)
    url_key.unlink(missing_ok=True)
    if blob.is_file() and re.fullmatch(r"[0-9a-f]{64}", digest):
        blob.unlink(missing_ok=True)
    return None


def _download(
    url: str,
    cache_dir: Path,
    timeout_s: float,
    retries: int,
    max_bytes: int,
    allow_private: bool = False,
) -> ImageSource:
    url_key = cache_dir / "urls" / _sha256_bytes(url.encode())
    hit = _cached(url_key, cache_dir)
    if hit is not None:
        return hit
    deadline = time.monotonic() + TOTAL_TIMEOUT_FACTOR * timeout_s  # for all attempts together
    for attempt in range(retries + 1):
        try:
            data = _http_get(url, timeout_s, max_bytes, deadline - time.monotonic(), allow_private)
            break
        except _FetchFailure as fail:
            wait = min(0.25 * 2**attempt, 2.0)
            if not fail.retryable or attempt == retries or time.monotonic() + wait >= deadline:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                return ImageSource(failure=fail.kind, detail=f"{url}: {fail.detail}{tries}")
            time.sleep(wait)
    digest = _sha256_bytes(data)
    blob = cache_dir / "blobs" / digest[:2] / digest
    if not blob.is_file() or blob.stat().st_size != len(data):
        with atomic_path(blob) as tmp:
            tmp.write_bytes(data)
    with atomic_path(url_key) as tmp:
        tmp.write_text(f"{digest} {len(data)}\n")
    return ImageSource(path=blob, sha256=digest)


def resolve_source(
    source: str | None,
    cache_dir: Path,
    timeout_s: float = 10.0,
    retries: int = 2,
    max_bytes: int = 10_000_000,
    *,
    local_roots: Sequence[Path] | None = None,
    allow_private_hosts: bool = False,
) -> ImageSource:
    """Turn one image reference into local bytes.

    Args:
        source: A local path (relative paths are relative to the working directory), a ``file://`` URL or
            an ``http(s)://`` URL. None or "" gives the ``no_image`` failure.
        cache_dir: Root of the download cache.
        timeout_s: Seconds a connection or a single read may stall; one source never takes more than
            ``TOTAL_TIMEOUT_FACTOR`` times this, retries included.
        retries: Extra attempts after a timeout, connection failure, truncated body or 5xx/429 status.
        max_bytes: Larger images are refused (``too_large``).
        local_roots: Folders local paths must resolve into (``outside_root`` otherwise); None: any path
            (for trusted callers; the embed stage always passes its roots).
        allow_private_hosts: Let URLs reach loopback, private and link-local addresses.

    Returns:
        The bytes' location and hash, or a failure kind and detail. Never raises for a bad source.
    """
    if source is None or not source.strip():
        return ImageSource(failure="no_image", detail="no image reference")
    source = source.strip()
    if not _URL_RE.match(source):
        return _local_source(Path(source), max_bytes, local_roots)
    parsed = urllib.parse.urlparse(source)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return ImageSource(failure="bad_url", detail=f"{source}: file URL with a remote host")
        return _local_source(Path(urllib.request.url2pathname(parsed.path)), max_bytes, local_roots)
    if scheme in ("http", "https"):
        return _download(source, cache_dir, timeout_s, retries, max_bytes, allow_private_hosts)
    return ImageSource(
        failure="bad_url", detail=f"{source}: scheme {scheme!r} not allowed (http, https, file)"
    )


def fetch_images(
    sources: Sequence[str | None],
    cache_dir: Path,
    *,
    timeout_s: float = 10.0,
    retries: int = 2,
    max_bytes: int = 10_000_000,
    workers: int = 4,
    local_roots: Sequence[Path] | None = None,
    allow_private_hosts: bool = False,
) -> list[ImageSource]:
    """Resolve many image references in parallel (each distinct reference once), in input order.

    Args:
        sources: One reference per item (see :func:`resolve_source`); None for items without an image.
        cache_dir: Root of the download cache.
        timeout_s: Seconds a connection or a single read may stall.
        retries: Extra attempts for retryable failures.
        max_bytes: Size limit per image.
        workers: Downloads (and file hashes) running at once.
        local_roots: Folders local paths must resolve into (see :func:`resolve_source`).
        allow_private_hosts: Let URLs reach loopback, private and link-local addresses.

    Returns:
        One :class:`ImageSource` per input. A summary of failures is logged.
    """
    distinct = sorted({s for s in sources if s is not None and s.strip()})
    resolved: dict[str, ImageSource] = {}
    if distinct:
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool,
            progress_bar(total=len(distinct), desc="fetch images", unit="img") as bar,
        ):
            resolve = functools.partial(
                resolve_source,
                cache_dir=cache_dir,
                timeout_s=timeout_s,
                retries=retries,
                max_bytes=max_bytes,
                local_roots=local_roots,
                allow_private_hosts=allow_private_hosts,
            )
            futures = {pool.submit(resolve, s): s for s in distinct}
            for fut in as_completed(futures):
                resolved[futures[fut]] = fut.result()
                bar.update(1)
    no_image = ImageSource(failure="no_image", detail="no image reference")
    out = [resolved.get(s, no_image) if s is not None else no_image for s in sources]
    failed = sorted((r for r in resolved.values() if r.failure), key=lambda r: r.detail)
    if failed:
        kinds = Counter(r.failure for r in failed)
        log.warning(
            "image fetch: %d of %d distinct sources failed (%s); first: %s",
            len(failed),
            len(distinct),
            ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())),
            "; ".join(r.detail for r in failed[:3]),
        )
    return out
