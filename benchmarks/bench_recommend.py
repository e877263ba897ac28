"""Top-K retrieval at catalogue scale: one user's top-10 latency for exact torch, faiss flat, HNSW, IVF and PQ.

N random unit item vectors (hidden 64; i.i.d. Gaussian, or ``--clusters C`` a mixture of C centres) and
``--users`` random unit queries, each with a random history of
``--history`` items that is masked (the recommend stage's and the pyfunc model's code path:
:func:`pipeline.recommend.topk.top_k` for exact, :class:`pipeline.recommend.retrieval.ItemIndex` for the
indexes). Each user is one call (batch of 1), as a served request is; the figures are the median and p95 of
those calls, the index build time, and each index's recall@k against exact (the share of exact's top-k it
returns, averaged over the users). ``--json`` also writes the whole run's wall seconds and peak RSS (GB);
``--indexes flat ivf`` skips the HNSW build, which at 10 M items takes longer than the rest.

    nice -n 19 python benchmarks/bench_recommend.py --items 100000 --threads 1 --json out.json
    python benchmarks/bench_recommend.py --items 10000000 --clusters 1000 --indexes ivf --ivf-nprobe 16 32 64
    python benchmarks/bench_recommend.py --items 10000000 --indexes pq --pq-rerank 500 1000 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, required=True, help="catalogue size N")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--clusters",
        type=int,
        default=0,
        help="0: i.i.d. Gaussian vectors (HNSW's worst case); C: a mixture of C Gaussian centres, items and "
        "queries alike (closer to learned embeddings)",
    )
    ap.add_argument("--spread", type=float, default=0.7, help="--clusters: noise scale around a centre")
    ap.add_argument("--users", type=int, default=200, help="timed single-user calls")
    ap.add_argument("--history", type=int, default=20, help="masked history items per user")
    ap.add_argument(
        "--indexes",
        nargs="+",
        choices=("flat", "hnsw", "ivf", "pq"),
        default=["flat", "hnsw"],
        help="faiss indexes to build",
    )
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument(
        "--hnsw-ef-search",
        type=int,
        nargs="+",
        default=[128],
        help="several: each timed on the same graph (methods faiss_hnsw_ef<N>)",
    )
    ap.add_argument("--hnsw-ef-construction", type=int, default=40)
    ap.add_argument("--ivf-nlist", type=int, default=None, help="ivf cells (default: sqrt(items))")
    ap.add_argument(
        "--ivf-nprobe",
        type=int,
        nargs="+",
        default=[32],
        help="several: each timed on the same index (methods faiss_ivf_np<N>)",
    )
    ap.add_argument("--pq-m", type=int, default=None, help="pq sub-quantizers (default: hidden / 2)")
    ap.add_argument(
        "--pq-rerank",
        type=int,
        nargs="+",
        default=[1000],
        help="several: each timed on the same index (methods faiss_pq_rr<N>)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    return ap.parse_args()


def main() -> None:
    args = _args()
    t_start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    import numpy as np
    import torch

    from pipeline.recommend.retrieval import IndexSpec, ItemIndex
    from pipeline.recommend.topk import top_k

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    centres = rng.standard_normal((args.clusters, args.hidden), dtype=np.float32) if args.clusters else None

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, args.hidden), dtype=np.float32)
        if centres is not None:  # a mixture: centre + noise, as bench_correlate's teacher vectors
            x *= args.spread
            x += centres[rng.integers(0, args.clusters, n)]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    items, queries = unit(args.items), unit(args.users)
    table = torch.from_numpy(np.vstack([np.zeros((1, args.hidden), np.float32), items]))  # row 0: padding
    hist = [1 + rng.choice(args.items, args.history, replace=False) for _ in range(args.users)]
    indptr = np.array([0, args.history], dtype=np.int64)

    def exact(u: int) -> np.ndarray:
        scores = torch.from_numpy(queries[u : u + 1]) @ table.T
        return top_k(scores, args.k, indptr, hist[u])[0].numpy()[0]

    efs, probes, reranks = args.hnsw_ef_search, args.ivf_nprobe, args.pq_rerank
    spec = IndexSpec(  # the kinds are set below
        "hnsw",
        args.hnsw_m,
        efs[0],
        args.hnsw_ef_construction,
        args.ivf_nlist,
        probes[0],
        args.pq_m,
        reranks[0],
    )
    indexes, build_s = {}, {}
    for kind in args.indexes:
        t = time.perf_counter()
        indexes[kind] = ItemIndex(items, spec, kind)
        build_s[kind] = time.perf_counter() - t
        print(f"built {kind} over {args.items} items in {build_s[kind]:.1f} s", flush=True)

    def search(u: int, index: ItemIndex, knob: int | None) -> np.ndarray:
        if knob is not None and index.kind == "hnsw":
            index.index.hnsw.efSearch = knob
        elif knob is not None and index.kind == "pq":
            index.index.rerank = knob
        elif knob is not None:
            index.index.nprobe = knob
        return index.search(queries[u : u + 1], args.k, indptr, hist[u])[0][0]

    methods, kinds = {"exact_torch": exact}, {}  # kinds: method name -> the index it searches
    knobs = {"hnsw": ("ef", efs), "ivf": ("np", probes), "pq": ("rr", reranks)}  # timed on one built index
    for kind, index in indexes.items():
        tag, values = knobs.get(kind, ("", [None]))
        for v in values:
            name = f"faiss_{kind}" + (f"_{tag}{v}" if len(values) > 1 else "")
            methods[name] = lambda u, index=index, v=v: search(u, index, v)
            kinds[name] = kind
    truth = [exact(u) for u in range(args.users)]
    result: dict = {
        "items": args.items,
        "hidden": args.hidden,
        "clusters": args.clusters,
        "spread": args.spread if args.clusters else None,
        "k": args.k,
        "users": args.users,
        "history": args.history,
        "threads": args.threads,
        "hnsw": {
            "m": args.hnsw_m,
            "ef_search": efs[0] if len(efs) == 1 else efs,
            "ef_construction": args.hnsw_ef_construction,
        },
        "ivf": {
            "nlist": int(indexes["ivf"].index.nlist) if "ivf" in indexes else args.ivf_nlist,
            "nprobe": probes[0] if len(probes) == 1 else probes,
        },
        "pq": {
            "m": int(indexes["pq"].index.index.pq.M) if "pq" in indexes else args.pq_m,
            "rerank": reranks[0] if len(reranks) == 1 else reranks,
        },
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "methods": {},
    }
    for name, method in methods.items():
        method(0)  # warm-up
        times, recall = [], []
        for u in range(args.users):
            t = time.perf_counter()
            got = method(u)
            times.append(time.perf_counter() - t)
            assert not set(got.tolist()) & set(hist[u].tolist()), "a history item was recommended"
            recall.append(len(set(got.tolist()) & set(truth[u].tolist())) / args.k)
        ms = np.array(times) * 1000
        row = {
            "median_ms": round(float(np.median(ms)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "recall_at_k": round(float(np.mean(recall)), 4),
        }
        if name in kinds:
            row["build_s"] = round(build_s[kinds[name]], 2)
        result["methods"][name] = row
        print(f"{name:16s} median {row['median_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f} ms  recall@{args.k} "
              f"{row['recall_at_k']:.4f}" + (f"  build {row['build_s']:.1f} s" if "build_s" in row else ""),
              flush=True)  # fmt: skip
    result["wall_s"] = round(time.perf_counter() - t_start, 2)  # inputs, builds and every timed call
    result["peak_rss_gb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
    )  # KiB on Linux
    print(f"wall {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
