"""Benchmark the ingest stage on a large synthetic catalogue, in one of two raw formats.

``--format ratings_csv`` (the default): the demo generator's vectorised path (images off) writes
``ratings_Bench.csv`` (user,item,rating,timestamp) and ``meta_Bench.json.gz`` (Python-literal metadata), read
by source amazon2014. Target at full size (1,000,000 items, 10,000,000 interactions): under 2 minutes and 8 GB.

``--format csv2023``: the Amazon 2023 benchmark CSVs of a last_out split (``Bench.train.csv.gz``,
``.valid.csv.gz``, ``.test.csv.gz`` with 28-character user ids and 10-character parent_asins, timestamps in
ms) and ``meta_Bench.jsonl``, read by source amazon2023_csv. Users have 5 + geometric(1/6) interactions (mean
~10); items are drawn with a Zipf-like popularity skew (p(rank r) ~ 1 / (r + 10)^1.0). Target: 10,000,000
interactions under 3 minutes and 8 GB.
Measured (2-core CPU shared with other jobs, nice 19, 1 thread; CPU = user + system seconds of the child):
1,000,022 rows 4.9 s CPU, 0.37 GB peak RSS; 10,000,023 rows 37.1 s CPU, 1.87 GB (wall 282 s and 627 s:
the child got under 10 % of a core at a load average of ~10).

Either way ``run_ingest`` runs in a child process so that its wall time and peak RSS are measured on their
own; ``--json out.json`` writes them (and the ingest statistics) for a script to read.

    nice -n 19 env OMP_NUM_THREADS=1 POLARS_MAX_THREADS=1 .venv/bin/python benchmarks/bench_ingest.py \
        --format csv2023 --interactions 10000000 --json out.json
    .venv/bin/python benchmarks/bench_ingest.py --items 10000 --interactions 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import DataParams, DemoParams, MLflowParams  # noqa: E402
from pipeline.data.ingest import run_ingest  # noqa: E402
from pipeline.data.sources.demo import write_demo_raw  # noqa: E402
from pipeline.layout import Layout  # noqa: E402

CATEGORY = "Bench"


def _expected_length(demo: DemoParams) -> float:
    """Mean sequence length of the generator's length distribution (estimated by sampling)."""
    rng = np.random.default_rng(0)
    draws = demo.min_len + np.floor(rng.exponential((demo.max_len - demo.min_len) / 3.0, 200_000))
    return float(np.minimum(draws, demo.max_len).mean())


def generate(workdir: Path, items: int, interactions: int, families: int, seed: int) -> None:
    demo = DemoParams(seed=seed, items=items, families=families, users=10, images=False)
    users = max(10, round(interactions / _expected_length(demo)))
    t0 = time.perf_counter()
    files = write_demo_raw(
        demo, CATEGORY, workdir / "raw" / "amazon2014", reviews_format="ratings_csv", users=users
    )
    size_mb = (files.reviews.stat().st_size + files.meta.stat().st_size) / 1e6
    print(
        f"generate: {items:,} items, {users:,} users, {files.interactions.item.size:,} interactions "
        f"({size_mb:,.0f} MB raw) in {time.perf_counter() - t0:.1f} s"
    )


def generate_csv2023(workdir: Path, interactions: int, items: int, seed: int) -> dict[str, int]:
    """Write a last_out split of about ``interactions`` rows in the 2023 benchmark format (vectorised)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1 / 6, size=interactions // 5 + 1) - 1
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), interactions)) + 1]
    n = int(lengths.sum())
    user = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    weights = 1.0 / (np.arange(items, dtype=np.float64) + 10.0)
    item = rng.permutation(items)[np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(n))]
    item = np.minimum(item, items - 1)
    start = rng.integers(1_400_000_000_000, 1_600_000_000_000, size=lengths.size)
    ts = np.repeat(start, lengths) + np.cumsum(rng.integers(1, 10_000_000, size=n))  # increasing per user
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    back = np.repeat(lengths, lengths) - (np.arange(n) - first)  # 1 = the user's last row
    frame = pl.DataFrame(
        {
            "user_id": "AG" + pl.Series(user).cast(pl.String).str.pad_start(26, "0"),
            "parent_asin": "B0" + pl.Series(item).cast(pl.String).str.pad_start(8, "0"),
            "rating": rng.integers(1, 6, size=n).astype(np.float64),
            "timestamp": ts,
            "part": np.where(back == 1, 2, np.where(back == 2, 1, 0)),
        }
    )
    raw = workdir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for code, part in enumerate(("train", "valid", "test")):
        rows = frame.filter(pl.col("part") == code).drop("part")
        rows.write_csv(raw / f"{CATEGORY}.{part}.csv.gz", compression="gzip")
    meta = pl.DataFrame(
        {"parent_asin": "B0" + pl.Series(np.arange(items)).cast(pl.String).str.pad_start(8, "0")}
    )
    meta.with_columns(title=pl.format("Item {} of the benchmark", pl.col("parent_asin"))).write_ndjson(
        raw / f"meta_{CATEGORY}.jsonl"
    )
    size_mb = sum(f.stat().st_size for f in raw.iterdir()) / 1e6
    print(
        f"generate: {lengths.size:,} users, {items:,} items, {n:,} interactions ({size_mb:,.0f} MB raw, "
        f"gzipped) in {time.perf_counter() - t0:.1f} s"
    )
    return {"users": int(lengths.size), "items": items, "interactions": n}


def ingest_csv2023(workdir: Path) -> dict:
    raw = workdir / "raw"
    data = DataParams(
        source="amazon2023_csv",
        category=CATEGORY,
        raw_dir=str(raw),
        text_columns=["title"],
        image_column=None,
        benchmark={
            **{f"{p}_file": str(raw / f"{CATEGORY}.{p}.csv.gz") for p in ("train", "valid", "test")},
            "meta_file": str(raw / f"meta_{CATEGORY}.jsonl"),
        },
    )
    t0 = time.perf_counter()
    layout = Layout.flat(workdir)
    stats = run_ingest(data, MLflowParams(enabled=False), layout.processed, layout.data_stats)
    print(
        f"ingest: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return stats


def ingest(workdir: Path, kcore: int) -> None:
    data = DataParams(  # the generated metadata has no image field
        source="amazon2014", category=CATEGORY, raw_dir=str(workdir / "raw"), kcore=kcore, image_column=None
    )
    t0 = time.perf_counter()
    layout = Layout.flat(workdir)
    stats = run_ingest(data, MLflowParams(enabled=False), layout.processed, layout.data_stats)
    wall = time.perf_counter() - t0
    print(
        f"ingest: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions "
        f"(raw {stats['raw']['interactions']:,}) in {wall:.1f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=("ratings_csv", "csv2023"), default="ratings_csv")
    ap.add_argument(
        "--items", type=int, default=None, help="default: 1,000,000 (csv2023: interactions // 10)"
    )
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--families", type=int, default=None, help="ratings_csv: default items // 50")
    ap.add_argument(
        "--kcore", type=int, default=5, help="ratings_csv only (csv2023 keeps its official split)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write wall seconds, peak RSS and the stats here")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="default: benchmarks/results/ingest_<format>_<n>"
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--ingest-only", action="store_true", help=argparse.SUPPRESS)  # the measured child
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    csv2023 = args.format == "csv2023"
    items = args.items or (max(10, args.interactions // 10) if csv2023 else 1_000_000)
    workdir = args.workdir or ROOT / "benchmarks" / "results" / f"ingest_{args.format}_{args.interactions}"
    if args.ingest_only:
        if csv2023:
            write_stats = ingest_csv2023(workdir)
            (workdir / "child_stats.json").write_text(json.dumps(write_stats))
        else:
            ingest(workdir, args.kcore)
        return
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        if csv2023:
            generated = generate_csv2023(workdir, args.interactions, items, args.seed)
        else:
            generate(workdir, items, args.interactions, args.families or max(2, items // 50), args.seed)
            generated = {"items": items, "interactions": args.interactions}
        generate_s = time.perf_counter() - t0
        cmd = [sys.executable, __file__, "--ingest-only", "--format", args.format, "--workdir", str(workdir)]
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--kcore", str(args.kcore)], check=True)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gb, cpu_s = usage.ru_maxrss / 1024**2, usage.ru_utime + usage.ru_stime  # Linux: ru_maxrss in KiB
        print(
            f"RESULT ingest wall {wall:.1f} s, CPU {cpu_s:.1f} s (process incl. start-up), peak RSS {peak_gb:.2f} GB"
        )
        if args.json is not None:
            stats_file = workdir / "child_stats.json"
            result = {
                "stage": "ingest",
                "format": args.format,
                "generated": generated,
                "generate_s": round(generate_s, 2),
                "wall_s": round(wall, 2),
                "cpu_s": round(
                    cpu_s, 2
                ),  # user + system of the child: the figure a loaded machine skews least
                "peak_rss_gb": round(peak_gb, 3),
                "stats": json.loads(stats_file.read_text()) if stats_file.exists() else None,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
