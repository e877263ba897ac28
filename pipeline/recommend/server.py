"""The served model with request limits: MLflow's own scoring app behind a guard that refuses, before MLflow
parses anything, a body over a byte limit (HTTP 413) and a JSON body nested deeper than a limit (HTTP 400).

``mlflow models serve`` parses the JSON body with Python's recursive ``json`` module before the model sees
it, so a body of 100,000 nested ``[`` was an HTTP 500 with a stack trace. :func:`limited_app` wraps the app
``mlflow.pyfunc.scoring_server.init`` builds (the same ``/invocations``, ``/ping``, ``/health`` and
``/version`` routes, the same JSON answers) in :class:`RequestLimits`, a plain ASGI middleware: it reads the
body as it arrives (stopping at the byte limit), measures the nesting with :func:`json_depth` (one linear
pass, no recursion), and hands the body on unchanged. ``python -m stages.serve`` is the command line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # 10 MiB: 10,000 histories of 50 ids are about 7 MiB of JSON
DEFAULT_MAX_JSON_DEPTH = 32  # a request of this model is 4 deep ({"dataframe_records": [{"items": [...]}]})
_THREAD_ABOVE = 1 << 16  # bodies larger than this are scanned off the event loop

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_depth(body: bytes) -> int:
    r"""The deepest nesting of ``[`` / ``{`` in a JSON text, brackets inside strings not counted.

    A linear, vectorised pass over the bytes (nothing is parsed, so no input can make it recurse): a quote
    preceded by an odd run of backslashes is escaped; the others open and close strings, so a byte is inside
    a string when an odd number of them come before it; the depth is the running sum of +1 per ``[``/``{``
    and -1 per ``]``/``}`` outside strings. For invalid JSON the answer is some depth; the parser after it
    rejects that input anyway, at or before the first byte where the two could disagree.

    >>> json_depth(rb'{"a": [1, [2]], "b": "]][[\"[ \\"}')
    3
    """
    a = np.frombuffer(body, dtype=np.uint8)
    quotes = a == ord('"')
    backslashes = np.flatnonzero(a == ord("\\")).astype(np.int64)
    if len(backslashes):  # the end of each odd run of backslashes escapes the byte after it
        breaks = np.flatnonzero(np.diff(backslashes) != 1)
        starts = backslashes[np.r_[0, breaks + 1]]
        ends = backslashes[np.r_[breaks, len(backslashes) - 1]]
        escaped = ends[(ends - starts) % 2 == 0] + 1
        quotes[escaped[escaped < len(a)]] = False
    inside = np.bitwise_xor.accumulate(quotes.view(np.uint8))  # 1 from an opening quote to its closing one
    outside = inside == 0
    steps = ((a == ord("[")) | (a == ord("{"))) & outside
    steps = steps.view(np.int8) - (((a == ord("]")) | (a == ord("}"))) & outside).view(np.int8)
    if not len(steps):
        return 0
    return max(int(np.cumsum(steps, dtype=np.int32).max()), 0)


def _is_json(scope: Scope) -> bool:
    """The request's media type is ``application/json`` (what makes MLflow parse the body as JSON)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


async def _answer(send: Send, status: int, error_code: str, message: str) -> None:
    """One JSON error in MLflow's own shape (``error_code``, ``message``), no stack trace."""
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: 413 for a body over ``max_body_bytes``, 400 for JSON nested over ``max_depth``.

    Every other request reaches ``app`` with its body exactly as sent. Requests that are not HTTP (the
    server's lifespan events) pass straight through.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_depth: int) -> None:
        if max_body_bytes < 1 or max_depth < 1:
            raise ValueError(
                f"request limits must be >= 1, got max_body_bytes={max_body_bytes}, max_depth={max_depth}"
            )
        self.app, self.max_body_bytes, self.max_depth = app, int(max_body_bytes), int(max_depth)

    def _too_large(self, detail: str) -> str:
        return (
            f"request body over the server's limit of {self.max_body_bytes} bytes (--max-body-bytes){detail}; "
            "split the request"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:  # refused before reading a byte
            await _answer(
                send, 413, "RESOURCE_LIMIT_EXCEEDED", self._too_large(f": Content-Length {declared}")
            )
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(send, 413, "RESOURCE_LIMIT_EXCEEDED", self._too_large(""))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if _is_json(scope):
            depth = await asyncio.to_thread(json_depth, body) if size > _THREAD_ABOVE else json_depth(body)
            if depth > self.max_depth:
                await _answer(
                    send,
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"JSON body nested {depth} levels deep; the server's limit is {self.max_depth} "
                    "(--max-json-depth)",
                )
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


def limited_app(model: Any, max_body_bytes: int, max_depth: int) -> RequestLimits:
    """MLflow's scoring app for a loaded pyfunc ``model`` (what ``mlflow models serve`` runs), behind
    :class:`RequestLimits`."""
    from mlflow.pyfunc import scoring_server

    return RequestLimits(scoring_server.init(model), max_body_bytes, max_depth)


def serve(
    model_uri: str,
    host: str,
    port: int,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    timeout: int | None = None,
) -> None:
    """Load ``model_uri`` (a path, ``runs:/``, ``models:/name/version``) and serve it until interrupted.

    ``timeout`` (seconds per request) is MLflow's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (default 60).
    """
    import os

    import uvicorn
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    if timeout is not None:
        os.environ[MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name] = str(int(timeout))
    model = scoring_server.load_model_with_mlflow_config(model_uri)
    uvicorn.run(limited_app(model, max_body_bytes, max_depth), host=host, port=port)
