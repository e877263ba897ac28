"""Benchmark the ingest stage on a large synthetic catalogue in the Amazon 2014 ratings-CSV format.

The demo generator's vectorised path (images off) writes ``ratings_Bench.csv`` (user,item,rating,timestamp)
and ``meta_Bench.json.gz`` (Python-literal metadata); then ``run_ingest`` (source amazon2014) runs in a child
process so that its wall time and peak RSS are measured on their own. Target at full size (1,000,000 items,
10,000,000 interactions): under 2 minutes and 8 GB on 2 cores.

    nice -n 10 .venv/bin/python benchmarks/bench_ingest.py                       # full size
    .venv/bin/python benchmarks/bench_ingest.py --items 10000 --interactions 100000
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--families", type=int, default=None, help="default: items // 50")
    ap.add_argument("--kcore", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="default: benchmarks/results/ingest_<items>")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--ingest-only", action="store_true", help=argparse.SUPPRESS)  # the measured child
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or ROOT / "benchmarks" / "results" / f"ingest_{args.items}"
    if args.ingest_only:
        ingest(workdir, args.kcore)
        return
    families = args.families or max(2, args.items // 50)
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        generate(workdir, args.items, args.interactions, families, args.seed)
        cmd = [
            sys.executable,
            __file__,
            "--ingest-only",
            "--workdir",
            str(workdir),
            "--kcore",
            str(args.kcore),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB
        print(f"RESULT ingest wall {wall:.1f} s (process incl. start-up), peak RSS {peak_gb:.2f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
