"""Resumable, checksummed download of raw files (urllib only).

A download writes ``<file>.part`` and resumes it with an HTTP ``Range`` request after an interruption;
when complete it is renamed to ``<file>`` and its SHA-256 is recorded in ``<file>.sha256`` (``sha256sum``
format). A file that has a sidecar is verified against it every time it is reused.

Safety: a download larger than ``max_bytes`` (announced or streamed) is refused, and a redirect may not
change the URL's scheme (except http -> https), so an https URL never continues over plain http, ftp or file
(:func:`pipeline.http.open_url` with ``same_scheme``).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
from pathlib import Path

from pipeline.errors import DataError
from pipeline.http import open_url, with_retries
from pipeline.io import file_digest
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

USER_AGENT = "kdsr-pipeline (research data ingest)"
CHUNK = 1 << 20
MAX_DOWNLOAD_BYTES = 50 * 10**9  # the largest official Amazon file (2023 reviews) is ~ 11 GB
RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # HTTP statuses retried


class _TooLarge(Exception):
    """The file is larger than the download limit: not retried."""


def checksum_path(path: Path) -> Path:
    """The sidecar holding ``path``'s SHA-256."""
    return path.with_name(path.name + ".sha256")


def verify_checksum(path: Path) -> bool:
    """Check ``path`` against its sidecar. Returns False when there is no sidecar (nothing to verify).

    Raises:
        DataError: the file's bytes differ from the recorded checksum.
    """
    sidecar = checksum_path(path)
    if not sidecar.exists():
        return False
    fields = sidecar.read_text().split()
    expected = fields[0].lower() if fields else ""
    actual = file_digest(path)
    if actual != expected:
        raise DataError(
            f"{path}: SHA-256 {actual} does not match {expected or '<empty>'} recorded in {sidecar} "
            f"(the file changed or is corrupt: delete both files to download it again)"
        )
    return True


def _write_sidecar(path: Path, digest: str) -> None:
    sidecar = checksum_path(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp, sidecar)


class _Incomplete(OSError):
    """The connection ended before the announced length: retry (resuming)."""


def _fetch_once(url: str, part: Path, timeout: float, max_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else None
    try:
        response = open_url(url, user_agent=USER_AGENT, timeout=timeout, headers=headers, same_scheme=True)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete, or stale
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total == offset:
                return
            log.warning("%s: server refused to resume at byte %d; starting again", url, offset)
            part.unlink()
            raise _Incomplete("range not satisfiable") from None
        raise
    with response:
        if offset and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise _Incomplete(f"unexpected Content-Range {content_range!r} for resume at {offset}")
            mode, start = "ab", offset
            log.info("%s: resuming at byte %d", url, offset)
        else:  # 200: the server ignored the Range header (or there was nothing to resume)
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.strip().isdigit() else None
        if total is not None and total > max_bytes:
            raise _TooLarge(f"{total} bytes announced, more than the limit of {max_bytes} bytes")
        written = start
        with (
            open(part, mode) as f,
            progress_bar(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=f"download {part.name[:-5]}",
                disable=None,
                mininterval=1.0,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as err:
                    f.write(err.partial)
                    raise _Incomplete(f"connection closed after {written + len(err.partial)} bytes") from None
                if not chunk:
                    break
                if written + len(chunk) > max_bytes:
                    raise _TooLarge(f"more than the limit of {max_bytes} bytes")
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if total is not None and written != total:
        raise _Incomplete(f"got {written} of {total} bytes")


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes \*/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _retryable(err: Exception) -> bool:
    """A network failure or a transient HTTP status: another attempt (resuming) may succeed."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in RETRY_STATUS
    return isinstance(err, urllib.error.URLError | OSError | http.client.HTTPException)


def download_file(
    url: str,
    dest: Path,
    *,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), then record its SHA-256 next to it.

    Args:
        url: http(s) URL.
        dest: final path; its folder is created.
        timeout: socket timeout per request in seconds.
        retries: further attempts (each resuming) after a network failure.
        backoff_s: wait before the first retry, doubled on each further one.
        max_bytes: a larger file is refused (and its partial download deleted).

    Returns:
        ``dest``.

    Raises:
        DataError: the file cannot be fetched; the message names the URL and where to put it by hand.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def on_retry(err: Exception, n: int, wait: float) -> None:
        reason = f"HTTP {err.code}" if isinstance(err, urllib.error.HTTPError) else err
        log.warning("download of %s failed (%s); retry %d/%d in %.1f s", url, reason, n + 1, retries, wait)

    try:
        with_retries(
            lambda: _fetch_once(url, part, timeout, max_bytes),
            retries=retries,
            retryable=_retryable,
            backoff_s=backoff_s,
            on_retry=on_retry,
        )
    except _TooLarge as err:
        part.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {url}: {err} (download limit); put the file at {dest} by hand"
        ) from None
    except urllib.error.HTTPError as err:
        raise DataError(
            f"cannot download {url}: HTTP {err.code} {err.reason}; put the file at {dest} by hand"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise DataError(
            f"cannot download {url} ({getattr(err, 'reason', err)}); without network access, put the "
            f"file at {dest} by hand"
            + (f" (the partial download {part} is kept and resumed)" if part.exists() else "")
        ) from None
    digest = file_digest(part)
    os.replace(part, dest)
    _write_sidecar(dest, digest)
    log.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return dest
