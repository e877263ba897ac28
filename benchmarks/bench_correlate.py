"""Benchmark the correlate stage: wall time and peak RSS on a generated (or real) catalogue.

(a) Beauty size (default): 12,101 items, 384-d teacher vectors, 200k codebook pairs.
    Target: under 30 s and 2 GB on CPU.
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py
(b) A large catalogue: target under 30 minutes and 16 GB on CPU at 1M items.
        nice -n 10 .venv/bin/python benchmarks/bench_correlate.py --items 1000000 --topk 20

The inputs (clustered unit vectors and random sequences, or ``--embeddings`` with a real
data/embeddings/<m>.parquet) are written by a child process, so the peak RSS reported is that of the
correlate run alone (plus the interpreter and torch).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.layout import Layout  # noqa: E402


def generate(out: Path, items: int, teacher_dim: int, clusters: int, users: int, seed: int) -> None:
    """Write the text embeddings (clustered unit vectors) and the sequences (LOO splits) of ``Layout.flat(out)``."""
    import numpy as np
    import pyarrow as pa

    from pipeline.artifacts.vectors import write_item_vectors
    from pipeline.io import write_parquet

    layout = Layout.flat(out)

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, teacher_dim)).astype(np.float32)
    vectors = np.empty((items, teacher_dim), dtype=np.float32)
    labels = rng.integers(0, clusters, items)
    for s in range(0, items, 100_000):
        e = min(items, s + 100_000)
        v = centres[labels[s:e]] + 0.7 * rng.normal(size=(e - s, teacher_dim)).astype(np.float32)
        vectors[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    layout.embeddings.mkdir(parents=True)
    layout.processed.mkdir(parents=True)
    write_item_vectors(
        layout.embedding("text"),
        vectors,
        np.zeros(items, bool),
        metadata={
            "model": "synthetic-clustered",
            "dim": teacher_dim,
            "normalize": True,
            "missing_policy": "mean",
        },
    )
    del vectors
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12_101)
    ap.add_argument("--users", type=int, default=None, help="default: 1.85 x items (Beauty's ratio)")
    ap.add_argument("--teacher-dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=200)
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench_correlate_"))
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
                target=generate, args=(work, args.items, args.teacher_dim, args.clusters, users, args.seed)
            )
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"input generation failed with exit code {proc.exitcode}")
            source = f"generated: {args.items} items x {args.teacher_dim}-d, {users} users"
        gen_s = time.perf_counter() - t0

        import torch

        from pipeline.config import CorrelateParams, MLflowParams
        from pipeline.supervision.correlate import run_correlate

        if args.threads:
            torch.set_num_threads(args.threads)
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
            device=args.device,
            seed=args.seed,
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        stats = run_correlate(
            params,
            ["text"],
            MLflowParams(enabled=False),
            layout.embeddings,
            layout.sequences,
            layout.supervision,
        )
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        s = stats["text"]
        print(f"input        : {source} (written in {gen_s:.1f} s, not timed)")
        print(
            f"settings     : dim {args.dim}, topk {args.topk}, pairs {args.pairs}, K {args.codes}, "
            f"D {args.sub_vectors}, block {args.block_size}, top-k search {args.topk_precision}, "
            f"device {args.device}, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(f"wall time    : {wall:.1f} s (correlate only)")
        print(f"peak RSS     : {peak:.0f} MiB (before the run: {rss_before:.0f} MiB)")
        print(f"reduction    : {s['reduction']}")
        print(
            f"top-k        : top1 mean {s['topk']['top1']['mean']}, random-pair mean "
            f"{s['topk']['random_pairs']['mean']}"
        )
        print(
            f"codebook     : inertia {s['codebook']['inertia']}, iterations {s['codebook']['iterations']}, "
            f"codes used {s['codebook']['codes_used']}/{args.codes}, max share {s['codebook']['max_code_share']}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
