"""Benchmark the correlate stage: wall time and peak RSS on a generated (or real) catalogue.

(a) Beauty size (default): 12,101 items, 384-d teacher vectors, 200k codebook pairs.
    Target: under 30 s and 2 GB on CPU.
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py
(b) A large catalogue: target under 30 minutes and 16 GB on CPU at 1M items.
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py --items 1000000 --topk 20

(c) Exact against approximate neighbours, figures to a JSON file a script can read (issue 26's target: 1M
    items under 3 minutes with recall@topk >= 0.95):
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py --items 1000000 --neighbours ivf \
            --json out.json

(d) The vectors' geometry decides the ivf recall (docs/RESULTS.md): ``--geometry isotropic`` (the default: noise
    in every dimension around 200 centres) or ``subspace`` (each cluster a 5-d patch, matched to
    Beauty's MiniLM vectors; ``--clusters`` sets how many patches share the items):
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py --items 10000000 --neighbours ivf \
            --geometry subspace --json out.json
    Many sparse patches (``--clusters 16529`` at 1 M items) are where the neighbour-of-neighbour refinement
    (``correlate.ann.refine_rounds``) does the work; ``--refine-rounds 0`` runs without it.

The inputs (clustered unit vectors and random sequences, or ``--embeddings`` with a real
data/embeddings/<m>.parquet) are written by a child process, and each ``--neighbours`` method runs in a
child of its own, so the peak RSS reported is that of one correlate run alone (plus the interpreter and
torch). ``--json`` writes per method: wall and CPU seconds, peak RSS, the recall@topk against an exact
search on the stage's seeded sample (``correlate.ann.recall_sample`` items; 1.0 for the exact search), and the
index and refinement figures of stats.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.layout import Layout  # noqa: E402

if TYPE_CHECKING:
    import numpy as np


def generate(
    out: Path, items: int, teacher_dim: int, clusters: int, users: int, seed: int, geometry: str = "isotropic"
) -> None:
    """Write the text embeddings (clustered unit vectors) and the sequences (LOO splits) of ``Layout.flat(out)``.

    ``geometry``: ``isotropic``, an item is its cluster's centre plus isotropic noise in every dimension (a
    local intrinsic dimension of about 80), or ``subspace`` (:data:`SUBSPACE`), the items of a cluster spread
    along a random low-dimensional subspace of their own, calibrated to the local geometry of Beauty's MiniLM
    vectors (``benchmarks/geometry.py``). The vectors are drawn and written 100,000 rows (one row group) at a
    time, so 10 M x 384 of them never sit in memory at once; the file has the columns and metadata of
    ``write_item_vectors``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io import vector_array, write_parquet

    layout = Layout.flat(out)

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, teacher_dim)).astype(np.float32)
    labels = rng.integers(0, clusters, items)
    if geometry == "subspace":  # drawn after the isotropic stream's draws, which stay as they were
        scale = 1.0 / np.sqrt(teacher_dim)
        centres *= scale
        offset = SUBSPACE["offset"] * scale * rng.normal(size=teacher_dim).astype(np.float32)
        shape = (clusters, teacher_dim, SUBSPACE["dim"])
        bases = SUBSPACE["spread"] * scale * rng.normal(size=shape).astype(np.float32)
    layout.embeddings.mkdir(parents=True)
    layout.processed.mkdir(parents=True)
    metadata = {
        "model": "synthetic-clustered",
        "dim": teacher_dim,
        "normalize": True,
        "missing_policy": "mean",
    }
    schema = pa.schema(
        [("item", pa.int32()), ("vector", pa.list_(pa.float32(), teacher_dim)), ("missing", pa.bool_())],
        metadata={k: json.dumps(v) for k, v in metadata.items()},
    )
    with pq.ParquetWriter(layout.embedding("text"), schema, compression="zstd", store_schema=True) as writer:
        for s in range(0, items, 100_000):
            e = min(items, s + 100_000)
            if geometry == "isotropic":
                v = centres[labels[s:e]] + 0.7 * rng.normal(size=(e - s, teacher_dim)).astype(np.float32)
            else:
                v = subspace_block(rng, labels[s:e], centres, offset, bases)
            block = {
                "item": pa.array(np.arange(s + 1, e + 1, dtype=np.int32)),
                "vector": vector_array(v / np.linalg.norm(v, axis=1, keepdims=True)),
                "missing": pa.array(np.zeros(e - s, bool)),
            }
            writer.write_table(pa.table(block, schema=schema))
    lengths = rng.integers(5, 16, users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(1, items + 1, int(offsets[-1])).astype(np.int32)
    write_parquet(
        layout.sequences,
        pa.table(
            {
                "user": pa.array(np.arange(1, users + 1, dtype=np.int32)),
                "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                "train_end": pa.array((lengths - 2).astype(np.int32)),
                "valid_end": pa.array((lengths - 1).astype(np.int32)),
            }
        ),
    )


# the subspace geometry, matched at Beauty's size (12,101 items, 200 clusters) to Beauty's MiniLM vectors by
# benchmarks/geometry.py: TwoNN intrinsic dimension 5.7 (Beauty 5.4, Scientific 3.2; the isotropic geometry
# 80), the 20th neighbour's cosine above a random item's, relative, 0.54 (0.54), a random item's 0.27 (0.34)
SUBSPACE = {"dim": 5, "spread": 0.6, "noise": 0.2, "offset": 1.0}


def subspace_block(
    rng: np.random.Generator,
    labels: np.ndarray,
    centres: np.ndarray,
    offset: np.ndarray,
    bases: np.ndarray,
) -> np.ndarray:
    """Vectors of the items with cluster ``labels``: a shared offset, the cluster's centre, a point of the
    cluster's own subspace (``bases[k]``: teacher_dim x SUBSPACE["dim"]) and a little isotropic noise."""
    import numpy as np

    n, d = len(labels), centres.shape[1]
    z = rng.normal(size=(n, bases.shape[2])).astype(np.float32)
    v = offset + centres[labels] + SUBSPACE["noise"] / np.sqrt(d) * rng.normal(size=(n, d)).astype(np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(bases) + 1))
    for k in range(len(bases)):
        rows = order[bounds[k] : bounds[k + 1]]
        v[rows] += z[rows] @ bases[k].T
    return v


def run_one(args: argparse.Namespace, method: str, work: str, queue: mp.Queue) -> None:
    """Run correlate once with ``correlate.neighbours: method`` on the inputs in ``work``; print its figures
    and put them (wall and CPU seconds, peak RSS, recall) on ``queue``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        queue.put(_run_one(args, method, Path(work)))
    except Exception as exc:  # reported by the parent, which exits non-zero
        logging.exception("correlate failed")
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _run_one(args: argparse.Namespace, method: str, work: Path) -> dict:
    import torch

    from pipeline.config import CorrelateParams, MLflowParams
    from pipeline.config.inputs import AnnParams
    from pipeline.supervision.correlate import run_correlate

    layout = Layout.flat(work)
    if args.threads:
        torch.set_num_threads(args.threads)
    ann = {
        "nprobe": args.nprobe,
        "nlist": args.nlist,
        "m": args.hnsw_m,
        "ef_search": args.ef_search,
        "refine_rounds": args.refine_rounds,
    }
    params = CorrelateParams(
        dim=args.dim,
        reduction=args.reduction,
        sub_vectors=args.sub_vectors,
        codes=args.codes,
        topk=args.topk,
        sample_pairs=args.pairs,
        kmeans_iters=args.kmeans_iters,
        block_size=args.block_size,
        topk_precision=args.topk_precision,
        neighbours=method,
        ann=AnnParams(**{k: v for k, v in ann.items() if v is not None}),
        device=args.device,
        seed=args.seed,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(layout.supervision, ignore_errors=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats = run_correlate(
        params,
        ["text"],
        MLflowParams(enabled=False),
        layout.embeddings,
        layout.sequences,
        layout.supervision,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = stats["text"]
    search = s["topk"]["search"]
    recall = search["recall"]["recall_at_k"] if "recall" in search else 1.0
    print(f"neighbours   : {method} -> {search['method']} {search.get('index', '')}")
    if "refine" in search:
        print(f"refinement   : {search['refine']}")
    print(
        f"settings     : dim {args.dim}, topk {args.topk}, pairs {args.pairs}, K {args.codes}, "
        f"D {args.sub_vectors}, block {args.block_size}, top-k search {args.topk_precision}, "
        f"device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"wall time    : {wall:.1f} s (correlate only; CPU time {cpu:.1f} s)")
    print(f"peak RSS     : {peak:.0f} MiB (before the run: {rss_before:.0f} MiB)")
    print(
        f"recall@{s['topk']['k']:<6}: {recall} (against exact on {search.get('recall', {}).get('sample', 'all')} items)"
    )
    print(f"reduction    : {s['reduction']}")
    print(
        f"top-k        : top1 mean {s['topk']['top1']['mean']}, random-pair mean "
        f"{s['topk']['random_pairs']['mean']}"
    )
    print(
        f"codebook     : inertia {s['codebook']['inertia']}, iterations {s['codebook']['iterations']}, "
        f"codes used {s['codebook']['codes_used']}/{args.codes}, max share {s['codebook']['max_code_share']}"
    )
    return {
        "neighbours": method,
        "method": search["method"],
        "index": search.get("index"),
        "refine": search.get("refine"),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(peak),
        "peak_rss_gb": round(peak / 1024, 3),
        "rss_before_mib": round(rss_before),
        "recall_at_k": recall,
        "recall_sample": search.get("recall", {}).get("sample"),
        "exact_fallback_items": search.get("exact_fallback_items"),
        "k": s["topk"]["k"],
        "torch_threads": torch.get_num_threads(),
    }


def _result(proc: mp.Process, queue: mp.Queue) -> dict:
    """The child's result, read before joining it (a child blocks until its queued result is read); an
    error if it dies without one (killed for memory, say)."""
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=5)
        except queue_module.Empty:
            if not proc.is_alive():
                return {"error": f"the run died with exit code {proc.exitcode} and no result"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12_101)
    ap.add_argument("--users", type=int, default=None, help="default: 1.85 x items (Beauty's ratio)")
    ap.add_argument("--teacher-dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument(
        "--geometry",
        choices=["isotropic", "subspace"],
        default="isotropic",
        help="generated vectors: isotropic noise around the cluster centres, or "
        "low-dimensional cluster subspaces matched to Beauty's MiniLM vectors (generate())",
    )
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--topk", type=int, default=20)
    ap.add_argument("--codes", type=int, default=50)
    ap.add_argument("--sub-vectors", type=int, default=8)
    ap.add_argument("--kmeans-iters", type=int, default=50)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--topk-precision", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--reduction", choices=["pca", "autoencoder"], default="pca")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--embeddings", type=Path, default=None, help="a real data/embeddings/<m>.parquet to use")
    ap.add_argument("--sequences", type=Path, default=None, help="the matching sequences.parquet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--neighbours",
        nargs="+",
        choices=["auto", "exact", "ivf", "hnsw"],
        default=["auto"],
        help="correlate.neighbours; several: one run (in its own process) each",
    )
    ap.add_argument("--nprobe", type=int, default=None, help="correlate.ann.nprobe (default: the schema's)")
    ap.add_argument("--nlist", type=int, default=None, help="correlate.ann.nlist (default: the schema's)")
    ap.add_argument("--hnsw-m", type=int, default=None, help="correlate.ann.m (default: the schema's)")
    ap.add_argument("--ef-search", type=int, default=None, help="correlate.ann.ef_search")
    ap.add_argument(
        "--refine-rounds", type=int, default=None, help="correlate.ann.refine_rounds (0: no refinement)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures of every run to this file")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the inputs and the last run's supervision/ into this new folder and keep it (prepared "
        "data for bench_step.py) instead of a temporary folder",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.keep is not None:
        if args.keep.exists():
            ap.error(f"--keep {args.keep}: exists already (give a new folder)")
        args.keep.mkdir(parents=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_correlate_"))
    layout = Layout.flat(work)
    try:
        t0 = time.perf_counter()
        if args.embeddings is not None:
            if args.sequences is None:
                ap.error("--embeddings needs --sequences")
            layout.embeddings.mkdir()
            layout.processed.mkdir()
            shutil.copy(args.embeddings, layout.embedding("text"))
            shutil.copy(args.sequences, layout.sequences)
            source = f"real: {args.embeddings}"
        else:
            users = args.users or int(round(1.85 * args.items))
            proc = mp.get_context("spawn").Process(
                target=generate,
                args=(work, args.items, args.teacher_dim, args.clusters, users, args.seed, args.geometry),
            )
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"input generation failed with exit code {proc.exitcode}")
            source = f"generated ({args.geometry}): {args.items} items x {args.teacher_dim}-d, {users} users"
        gen_s = time.perf_counter() - t0
        print(f"input        : {source} (written in {gen_s:.1f} s, not timed)")
        ctx = mp.get_context("spawn")
        runs = []
        for method in args.neighbours:
            queue = ctx.Queue()
            proc = ctx.Process(target=run_one, args=(args, method, str(work), queue))
            proc.start()
            result = _result(proc, queue)
            proc.join()
            if proc.exitcode != 0 or "error" in result:
                raise SystemExit(f"correlate with neighbours {method} failed: {result.get('error')}")
            runs.append(result)
        if args.json is not None:
            report = {
                "benchmark": "correlate",
                "input": source,
                "items": args.items if args.embeddings is None else None,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "cores": len(os.sched_getaffinity(0)),
                "load_average_1m_at_end": os.getloadavg()[0],
                "runs": runs,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"json         : {args.json}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
