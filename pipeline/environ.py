"""Environment variables set for the length of a block, restored afterwards (child processes started inside the
block inherit them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set each of ``values`` (or, for None, unset it) in ``os.environ`` for the block; the previous values,
    set or unset, come back when it ends, also on an error."""
    old = {k: os.environ.get(k) for k in values}

    def apply(vals: Mapping[str, str | None]) -> None:
        for k, v in vals.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(old)
