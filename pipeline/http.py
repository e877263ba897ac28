"""One HTTP client for both downloaders (raw data files: :mod:`pipeline.data.download`; item images:
:mod:`pipeline.teachers.fetch`), on urllib only.

- :func:`open_url` sends a GET with the caller's user agent and headers and follows redirects by a scheme
  rule: ``same_scheme`` (raw data: a redirect may not change the scheme, except http -> https, so an https
  URL never continues over plain http, ftp or file) or http(s) only (images: never ftp or file).
- A :class:`Guard` (optional) checks every address actually connected to (so it holds after each redirect
  and against DNS rebinding): only public addresses unless ``allow_private``; and it enforces a total
  deadline: a watchdog shuts the connection's sockets down when it passes, so a server that trickles bytes
  cannot hold a worker. :func:`get_bytes` reads one body into memory under such a guard.
- :func:`classify` turns a urllib/http.client/socket error into an :class:`HttpFailure` kind (``http_error``,
  ``timeout``, ``unreachable``, ``bad_url``) and whether a retry may help; :func:`with_retries` retries an
  attempt with exponential back-off, within an optional deadline.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_CHUNK = 1 << 16


class HttpFailure(Exception):
    """A failed request: its kind (see the module docstring), a readable detail, and whether to retry."""

    def __init__(self, kind: str, detail: str, retryable: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, reserved, ...)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class Guard:
    """One download's policy and deadline: which addresses it may connect to, and a watchdog that shuts its
    sockets down when the deadline passes (a blocked read then returns at once, whatever the server does).

    Args:
        allow_private: let the connection reach loopback, private and link-local addresses.
        seconds: the total deadline, from now.
        private_hint: appended to the ``private_host`` refusal (which setting allows it).
    """

    def __init__(self, allow_private: bool, seconds: float, private_hint: str = "") -> None:
        self.allow_private = allow_private
        self.seconds = seconds
        self.private_hint = private_hint
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Guard:
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
                    hint = f" ({self.private_hint})" if self.private_hint else ""
                    raise HttpFailure(
                        "private_host",
                        f"host {host} resolves to {ip}, which is not a public address{hint}",
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
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.guard.connection_factory(http.client.HTTPConnection, req), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            self.guard.connection_factory(http.client.HTTPSConnection, req),
            req,
            context=self._context,
            check_hostname=self._check_hostname,
        )


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme (or from http up to https)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's API
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new != old and (old, new) != ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect from {old} to {new} ({newurl}) refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's API
        if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"redirect to non-http(s) URL {newurl!r} refused", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(
    url: str,
    *,
    user_agent: str,
    timeout: float,
    headers: dict[str, str] | None = None,
    same_scheme: bool = False,
    guard: Guard | None = None,
) -> http.client.HTTPResponse:
    """GET ``url`` and return the open response (a context manager).

    Args:
        url: http(s) URL.
        user_agent: the ``User-Agent`` header.
        timeout: socket timeout per connection and read, in seconds.
        headers: further request headers (e.g. ``Range``).
        same_scheme: redirects keep the scheme (http -> https allowed); otherwise they may lead to http(s).
        guard: connect through it (address policy and total deadline); None: plain connections.

    Raises:
        urllib.error.HTTPError: an error status (or a refused redirect); other urllib/socket errors as raised.
    """
    request = urllib.request.Request(url, headers={"User-Agent": user_agent})
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    handlers: list = [_SameSchemeRedirects if same_scheme else _HTTPOnlyRedirects]
    if guard is not None:
        handlers += [_GuardedHTTPHandler(guard), _GuardedHTTPSHandler(guard)]
    return urllib.request.build_opener(*handlers).open(request, timeout=timeout)


def get_bytes(
    url: str,
    *,
    user_agent: str,
    timeout_s: float,
    max_bytes: int,
    budget_s: float,
    allow_private: bool = False,
    private_hint: str = "",
) -> bytes:
    """One GET attempt of at most ``budget_s`` seconds in all (a watchdog closes the connection then).

    Raises:
        HttpFailure: with a kind (``too_large``, ``timeout``, ``truncated``, ``private_host`` or one of
            :func:`classify`) and whether a retry may help.
    """
    with Guard(allow_private, budget_s, private_hint) as guard:
        try:
            with open_url(url, user_agent=user_agent, timeout=timeout_s, guard=guard) as resp:
                return _read_body(resp, max_bytes, guard)
        except HttpFailure:
            raise
        except Exception as err:
            if guard.expired:
                raise HttpFailure(
                    "timeout", f"no complete answer within {guard.seconds:.3g} s (total limit)", False
                ) from None
            failure = classify(err, timeout_s)
            if failure is None:
                raise
            raise failure from None


def _read_body(resp: http.client.HTTPResponse, max_bytes: int, guard: Guard) -> bytes:
    length = resp.headers.get("Content-Length")
    expected = int(length) if length is not None and length.strip().isdigit() else None
    if expected is not None and expected > max_bytes:
        raise HttpFailure("too_large", f"Content-Length {length} > limit {max_bytes}", False)
    buf = bytearray()
    while chunk := resp.read1(_CHUNK):  # one socket read at a time: the deadline is checked between them
        buf += chunk
        if len(buf) > max_bytes:
            raise HttpFailure("too_large", f"more than {max_bytes} bytes", False)
        if guard.expired or guard.remaining() <= 0:
            break
    if guard.expired or guard.remaining() <= 0:
        raise HttpFailure(
            "timeout",
            f"download took over {guard.seconds:.3g} s (total limit); got {len(buf)} bytes",
            False,
        )
    if expected is not None and len(buf) != expected:
        raise HttpFailure("truncated", f"got {len(buf)} of {expected} announced bytes", True)
    return bytes(buf)


def classify(err: Exception, timeout_s: float) -> HttpFailure | None:
    """The failure kind of a urllib/http.client/socket error (None for anything else: a bug, re-raised)."""
    if isinstance(err, urllib.error.HTTPError):
        return HttpFailure("http_error", f"HTTP {err.code} {err.reason}", err.code >= 500 or err.code == 429)
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, TimeoutError):
            return HttpFailure("timeout", f"no response within {timeout_s:g} s", True)
        return HttpFailure("unreachable", str(err.reason), True)
    if isinstance(err, TimeoutError):
        return HttpFailure("timeout", f"no response within {timeout_s:g} s", True)
    if isinstance(err, http.client.HTTPException | OSError):
        return HttpFailure("unreachable", f"{type(err).__name__}: {err}", True)
    if isinstance(err, ValueError):  # e.g. a URL urllib cannot parse (bad port, control characters)
        return HttpFailure("bad_url", str(err), False)
    return None


def with_retries(
    attempt: Callable[[], T],
    *,
    retries: int,
    retryable: Callable[[Exception], bool],
    backoff_s: float,
    max_wait_s: float = float("inf"),
    deadline: float | None = None,
    on_retry: Callable[[Exception, int, float], None] | None = None,
) -> T:
    """Call ``attempt`` until it returns, retrying a ``retryable`` failure up to ``retries`` times.

    The wait before retry ``n`` (from 0) is ``min(backoff_s * 2**n, max_wait_s)``; no retry starts when that
    wait would pass ``deadline`` (a ``time.monotonic()`` value).

    Args:
        attempt: one try; what it raises decides.
        retries: further attempts after the first.
        retryable: whether an exception may go away on another attempt.
        backoff_s: wait before the first retry, doubled on each further one.
        max_wait_s: the longest wait.
        deadline: no retry would start past it.
        on_retry: called with (the exception, retry number from 0, wait in seconds) before each wait.

    Raises:
        Exception: the last failure, when it is not retryable or no retry is left.
    """
    for n in range(retries + 1):
        try:
            return attempt()
        except Exception as err:
            wait = min(backoff_s * 2**n, max_wait_s)
            out_of_time = deadline is not None and time.monotonic() + wait >= deadline
            if not retryable(err) or n == retries or out_of_time:
                raise
            if on_retry is not None:
                on_retry(err, n, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
