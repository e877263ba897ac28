"""Image sources to local bytes: local paths, ``file://`` and ``http(s)://`` URLs.

Downloads land in a content-addressed cache under ``<cache_dir>``::

    blobs/<sha[:2]>/<sha256 of the bytes>     the downloaded bytes
    urls/<sha256 of the URL>                  the sha256 of the bytes that URL gave

so a rerun reads a URL it fetched before from disk without touching the network, and identical images
behind different URLs are stored once. Local files are read in place (not copied). Failed fetches are not
cached: the next run tries them again.

A source that cannot be turned into bytes yields an :class:`ImageSource` with a ``failure`` kind instead of
raising, so one bad item never stops the stage. Kinds: ``no_image`` (null or empty), ``bad_url`` (scheme
other than http/https/file), ``file_not_found``, ``unreadable_file``, ``too_large`` (over ``max_bytes``),
``http_error`` (an HTTP error status), ``timeout`` and ``unreachable`` (connection failures).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.io import atomic_path, file_digest

log = logging.getLogger(__name__)

USER_AGENT = "kdsr-pipeline/0.1 (image teacher)"
# A download whose single reads each finish within the timeout but that trickles on is abandoned after this
# many timeouts in total.
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


def _local_source(path: Path, max_bytes: int) -> ImageSource:
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


def _http_get(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """One GET attempt; raises :class:`_FetchFailure` with a kind and whether a retry may help."""
    opener = urllib.request.build_opener(_HTTPOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    deadline = time.monotonic() + TOTAL_TIMEOUT_FACTOR * timeout_s
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _FetchFailure("too_large", f"Content-Length {length} > limit {max_bytes}", False)
            buf = bytearray()
            while chunk := resp.read(_CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise _FetchFailure("too_large", f"more than {max_bytes} bytes", False)
                if time.monotonic() > deadline:
                    raise _FetchFailure(
                        "timeout", f"download took over {TOTAL_TIMEOUT_FACTOR * timeout_s:g} s", True
                    )
            return bytes(buf)
    except _FetchFailure:
        raise
    except urllib.error.HTTPError as err:
        retryable = err.code >= 500 or err.code == 429
        raise _FetchFailure("http_error", f"HTTP {err.code} {err.reason}", retryable) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise _FetchFailure("timeout", f"no response within {timeout_s:g} s", True) from None
        raise _FetchFailure("unreachable", str(err.reason), True) from None
    except TimeoutError:
        raise _FetchFailure("timeout", f"no response within {timeout_s:g} s", True) from None
    except (http.client.HTTPException, OSError) as err:
        raise _FetchFailure("unreachable", f"{type(err).__name__}: {err}", True) from None


def _download(url: str, cache_dir: Path, timeout_s: float, retries: int, max_bytes: int) -> ImageSource:
    url_key = cache_dir / "urls" / _sha256_bytes(url.encode())
    if url_key.is_file():
        digest = url_key.read_text().strip()
        blob = cache_dir / "blobs" / digest[:2] / digest
        if blob.is_file():
            return ImageSource(path=blob, sha256=digest)
    for attempt in range(retries + 1):
        try:
            data = _http_get(url, timeout_s, max_bytes)
            break
        except _FetchFailure as fail:
            if not fail.retryable or attempt == retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                return ImageSource(failure=fail.kind, detail=f"{url}: {fail.detail}{tries}")
            time.sleep(min(0.25 * 2**attempt, 2.0))
    digest = _sha256_bytes(data)
    blob = cache_dir / "blobs" / digest[:2] / digest
    if not blob.is_file():
        with atomic_path(blob) as tmp:
            tmp.write_bytes(data)
    with atomic_path(url_key) as tmp:
        tmp.write_text(digest + "\n")
    return ImageSource(path=blob, sha256=digest)


def resolve_source(
    source: str | None,
    cache_dir: Path,
    timeout_s: float = 10.0,
    retries: int = 2,
    max_bytes: int = 10_000_000,
) -> ImageSource:
    """Turn one image reference into local bytes.

    Args:
        source: A local path (relative paths are relative to the working directory), a ``file://`` URL or
            an ``http(s)://`` URL. None or "" gives the ``no_image`` failure.
        cache_dir: Root of the download cache.
        timeout_s: Seconds a connection or a single read may stall.
        retries: Extra attempts after a timeout, connection failure or 5xx/429 status.
        max_bytes: Larger images are refused (``too_large``).

    Returns:
        The bytes' location and hash, or a failure kind and detail. Never raises for a bad source.
    """
    if source is None or not source.strip():
        return ImageSource(failure="no_image", detail="no image reference")
    source = source.strip()
    if not _URL_RE.match(source):
        return _local_source(Path(source), max_bytes)
    parsed = urllib.parse.urlparse(source)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return ImageSource(failure="bad_url", detail=f"{source}: file URL with a remote host")
        return _local_source(Path(urllib.request.url2pathname(parsed.path)), max_bytes)
    if scheme in ("http", "https"):
        return _download(source, cache_dir, timeout_s, retries, max_bytes)
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
) -> list[ImageSource]:
    """Resolve many image references in parallel (each distinct reference once), in input order.

    Args:
        sources: One reference per item (see :func:`resolve_source`); None for items without an image.
        cache_dir: Root of the download cache.
        timeout_s: Seconds a connection or a single read may stall.
        retries: Extra attempts for retryable failures.
        max_bytes: Size limit per image.
        workers: Downloads (and file hashes) running at once.

    Returns:
        One :class:`ImageSource` per input. A summary of failures is logged.
    """
    distinct = sorted({s for s in sources if s is not None and s.strip()})
    resolved: dict[str, ImageSource] = {}
    if distinct:
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool,
            tqdm(total=len(distinct), desc="fetch images", unit="img") as bar,
        ):
            futures = {
                pool.submit(resolve_source, s, cache_dir, timeout_s, retries, max_bytes): s for s in distinct
            }
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
