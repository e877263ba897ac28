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

import functools
import hashlib
import logging
import re
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pipeline.http import HttpFailure, get_bytes, with_retries
from pipeline.io import atomic_path, file_digest
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

USER_AGENT = "kdsr-pipeline/0.1 (image teacher)"
# One source (every attempt and back-off included) is abandoned after this many timeouts in total, however
# its server trickles bytes (a watchdog closes the connection at the deadline).
TOTAL_TIMEOUT_FACTOR = 6.0
PRIVATE_HINT = "embed.image.allow_private_hosts: true allows it"
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


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    retried: list[int] = []

    def attempt() -> bytes:
        return get_bytes(
            url,
            user_agent=USER_AGENT,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            budget_s=deadline - time.monotonic(),
            allow_private=allow_private,
            private_hint=PRIVATE_HINT,
        )

    try:
        data = with_retries(
            attempt,
            retries=retries,
            retryable=lambda err: isinstance(err, HttpFailure) and err.retryable,
            backoff_s=0.25,
            max_wait_s=2.0,
            deadline=deadline,
            on_retry=lambda err, n, wait: retried.append(n),
        )
    except HttpFailure as fail:
        tries = f" (after {len(retried) + 1} attempts)" if retried else ""
        return ImageSource(failure=fail.kind, detail=f"{url}: {fail.detail}{tries}")
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
