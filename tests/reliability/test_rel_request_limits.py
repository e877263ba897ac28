"""The serving entry's request limits (issue 23): the nesting scanner's known answers, and the ASGI guard's
answers driven in process (the real server is tests/test_serving.py)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from pipeline.recommend.server import RequestLimits, json_depth


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b"12", 0),
        (b"[]", 1),
        (b'{"a": [1, [2, {}]]}', 4),
        (b'{"dataframe_records": [{"items": ["B1", "B2"]}]}', 4),
        (b'["[[[", "{{{"]', 1),  # brackets inside strings do not count
        (rb'["\"[[[", 1]', 1),  # an escaped quote does not end the string
        (rb'["\\", [1]]', 2),  # an escaped backslash does not escape the quote after it
        (rb'["\\\"[", [1]]', 2),  # \\ then \": the string goes on
        (rb'"\\\\" [[', 2),  # an even run of backslashes escapes nothing
        (b'"unterminated [[[', 0),
        (b"[[]]]]]", 2),  # more closing than opening: never below zero
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 100_001),
    ],
)
def test_json_depth_known_answers(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth


def _reference_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    return 0


def test_json_depth_agrees_with_a_parser_on_random_documents_full_of_quotes_and_brackets() -> None:
    rng = random.Random(0)

    def text() -> str:
        return "".join(rng.choice('[]{}"\\ab') for _ in range(rng.randint(0, 6)))

    def value(depth: int) -> object:
        r = rng.random()
        if depth > 6 or r < 0.3:
            return text()
        if r < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(2000):
        doc = value(0)
        assert json_depth(json.dumps(doc).encode()) == _reference_depth(doc), doc


def drive(guard: RequestLimits, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP request through ``guard`` in process: (status, response body)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(guard(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


seen: list[bytes] = []  # the bodies the inner app received


async def echo(scope, receive, send) -> None:
    """The inner app: records the body it receives and answers 200."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    seen.append(body)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


JSON = {"content-type": "application/json"}


def test_guard_passes_a_normal_body_on_unchanged_even_in_pieces() -> None:
    seen.clear()
    guard = RequestLimits(echo, max_body_bytes=100, max_depth=4)
    status, body = drive(guard, [b'{"inputs": ', b"[[1]]}"], JSON)
    assert (status, body, seen) == (200, b"ok", [b'{"inputs": [[1]]}'])


def test_guard_refuses_deep_json_with_400_naming_the_limit() -> None:
    seen.clear()
    guard = RequestLimits(echo, max_body_bytes=1000, max_depth=4)
    status, body = drive(
        guard, [b'{"inputs": [[[[1]]]]}'], {"content-type": "application/json; charset=utf-8"}
    )
    assert status == 400 and seen == []
    answer = json.loads(body)
    assert answer == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "JSON body nested 5 levels deep; the server's limit is 4 (--max-json-depth)",
    }
    # not JSON: MLflow does not parse it as JSON, so the depth is not checked
    status, _ = drive(guard, [b"[[[[[[[[[["], {"content-type": "text/csv"})
    assert status == 200


def test_guard_refuses_a_large_body_with_413_whether_declared_or_streamed() -> None:
    seen.clear()
    guard = RequestLimits(echo, max_body_bytes=10, max_depth=4)
    status, body = drive(guard, [b"x" * 11], {**JSON, "content-length": "11"})
    assert status == 413 and seen == []
    assert json.loads(body)["message"] == (
        "request body over the server's limit of 10 bytes (--max-body-bytes): Content-Length 11; "
        "split the request"
    )
    status, body = drive(guard, [b"x" * 6, b"x" * 6], JSON)  # chunked: no Content-Length
    assert status == 413 and seen == []
    assert "over the server's limit of 10 bytes (--max-body-bytes)" in json.loads(body)["message"]
    status, _ = drive(guard, [b"[1, 2, 3]", b"]"], JSON)  # exactly 10 bytes: allowed
    assert status == 200


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="request limits must be >= 1"):
        RequestLimits(echo, max_body_bytes=0, max_depth=4)
