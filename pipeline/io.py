"""The one place that writes and reads project artefacts: atomic files, Parquet (with vector columns), JSON.

Every output is written to a temporary name in the same folder and renamed over the target, so a crash
never leaves a half-written file and an existing good file survives a failed run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputLocked


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed over ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, target)
    except OSError as err:
        # e.g. ENOSPC from a write(), which names no file, or a writer's own temporary inside this one's
        # (a nested atomic_path): name the output that could not be written
        if err.filename is None or tmp_path.name in Path(str(err.filename)).name:
            what = err.strerror or str(err)
            if not what.startswith("cannot write ("):
                what = f"cannot write ({what})"
            raise OSError(err.errno, what, str(target)) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def lock_file(target: str | Path) -> Path:
    """The lock file of output ``target``: ``.<name>.lock`` next to it, holding its holder's pid and command
    while a run holds it; removed when the run ends."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


_HELD: dict[Path, int] = {}  # the output locks this process holds, with their nesting depth
_HELD_GUARD = threading.Lock()


def _try_lock(path: Path) -> int | None:
    """Open ``path`` and lock it (``flock``) without waiting: the descriptor, or None while another process
    holds it. The kernel drops the lock when its process ends, however it ends."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us removes the file before unlocking it: then lock the file at the path now
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "pid unknown"
    except OSError:  # released between the failed lock and this read
        return "pid unknown"


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Hold the lock of the output folder or file ``target`` for the block (:func:`lock_file`); nested holds
    in one process are free, so a stage run and the writers inside it can each take it.

    A plain ``flock`` rather than a lock library: the lock file carries the holder's pid for the message and
    is removed at the end without a race (a run that locked a file already removed locks the new one).

    Raises:
        OutputLocked: another live process holds it: "another run holds <target> (pid N: <command>)".
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_file(target)
    key = path.resolve()
    with _HELD_GUARD:
        nested = key in _HELD
        if nested:
            _HELD[key] += 1
    if nested:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    fd = _try_lock(path)
    if fd is None:
        raise OutputLocked(
            f"another run holds {target} ({_holder(path)}); wait for it to finish, or write elsewhere"
        )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv) or sys.executable}\n".encode())
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            yield
        finally:
            with _HELD_GUARD:
                del _HELD[key]
            path.unlink(missing_ok=True)  # before unlocking: see _try_lock
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_dir(target: str | Path, *, clear_stale: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``target``; on success it replaces ``target`` whole (two
    renames; the old folder is deleted afterwards), on an exception it is removed and ``target`` is left as
    it was. The lock of ``target`` (:func:`output_lock`) is held throughout.

    Args:
        target: the output folder.
        clear_stale: first delete the temporary siblings a killed run left behind. Under the lock every such
            sibling is a dead run's: a live run holds the lock until its staging folder is gone.
    """
    target = Path(target)
    with output_lock(target):
        if clear_stale:
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield tmp
            old = None
            if target.exists() or target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.replace(target, old / target.name)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def file_digest(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (checksums, cache keys, run tags)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """Write JSON atomically, full float precision; keys sorted unless ``sort_keys`` is False (then in the
    mapping's own order, e.g. a metrics file whose order is the column order of ``dvc exp show``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run the stage that produces it first)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A (N, dim) float array as a ``fixed_size_list<float32>[dim]`` Arrow column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def vectors_from_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Inverse of :func:`vector_array`: a fixed-size-list column back to a (N, dim) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


#: rows decoded at a time by :func:`iter_vector_column`, and rows per row group of :func:`write_parquet`
VECTOR_BATCH_ROWS = 65_536


def iter_vector_column(
    path: str | Path, column: str, rows: int, dim: int
) -> Iterator[tuple[int, np.ndarray]]:
    """A fixed-size-list column of a Parquet file, ``rows`` vectors of ``dim`` values, as ``(first row,
    (n, dim) float32 block)`` pairs of at most :data:`VECTOR_BATCH_ROWS` rows, decoded one batch at a time
    (with row groups of that size, as :func:`write_parquet` writes them, the reader never holds more than
    one group).

    Raises:
        ValueError: the column's rows or width differ from ``rows`` and ``dim``, or the file cannot be decoded
            (naming the file).
    """
    start = 0
    try:
        # read, not memory-mapped: mapped pages of a 15 GB file would count in the process's RSS
        with pq.ParquetFile(path, memory_map=False, pre_buffer=False) as f:
            batches = f.iter_batches(batch_size=VECTOR_BATCH_ROWS, columns=[column], use_threads=False)
            for batch in batches:
                n = batch.num_rows
                flat = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                if start + n > rows or flat.size != n * dim:
                    raise ValueError(
                        f"{path}: column {column!r} does not hold {rows} vectors of {dim} values"
                    )
                yield start, flat.reshape(n, dim).astype(np.float32, copy=False)
                start += n
    except (pa.ArrowInvalid, OSError) as err:  # a damaged file: name it, as read_parquet does
        raise ValueError(f"{path}: cannot be read as Parquet ({err})") from None
    if start != rows:
        raise ValueError(f"{path}: column {column!r} holds {start} vectors, expected {rows}")


def parquet_schema(path: str | Path) -> pa.Schema:
    """The schema of a Parquet file (its footer only), with the errors of :func:`read_parquet`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run the stage that produces it first)")
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: cannot be read as Parquet ({err})") from None


def write_parquet(
    path: str | Path,
    table: pa.Table | Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a table atomically. ``metadata`` values are stored JSON-encoded in the file's key-value metadata.

    A mapping is converted column by column; 2-D numpy arrays become fixed-size-list float32 columns.
    The file is written deterministically (no timestamps), so equal inputs give equal bytes, in row groups of
    :data:`VECTOR_BATCH_ROWS` rows: the writer's buffers and a batched reader's (:func:`iter_vector_column`)
    hold one group, not the whole column.
    """
    if not isinstance(table, pa.Table):
        cols = {}
        for name, col in table.items():
            if isinstance(col, np.ndarray) and col.ndim == 2:
                cols[name] = vector_array(col)
            else:
                cols[name] = col
        table = pa.table(cols)
    if metadata:
        existing = dict(table.schema.metadata or {})
        existing.update(
            {
                k.encode(): json.dumps(v, sort_keys=True, default=_json_default).encode()
                for k, v in metadata.items()
            }
        )
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=VECTOR_BATCH_ROWS,
            compression="zstd",
            write_statistics=True,
            store_schema=True,
        )


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file with a clear error when it is missing or not Parquet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run the stage that produces it first)")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: cannot be read as Parquet ({err})") from None


def parquet_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON-decoded key-value metadata written by :func:`write_parquet`."""
    out: dict[str, Any] = {}
    for k, v in (parquet_schema(path).metadata or {}).items():
        key = k.decode()
        if key == "ARROW:schema" or key.startswith("pandas"):
            continue
        try:
            out[key] = json.loads(v)
        except json.JSONDecodeError:
            out[key] = v.decode(errors="replace")
    return out


def json_digest(obj: Any) -> str:
    """SHA-256 hex digest of ``obj`` as JSON with sorted keys (non-JSON values as ``str``): key order ignored."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
