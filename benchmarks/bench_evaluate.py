"""Benchmark: full-ranking evaluation of 22,363 users over 12,101 items with a random-score model on CPU.

Uses the Beauty sequences (../shared/data/amazon-beauty/Beauty.txt, leave-one-out boundaries) when present,
otherwise generated sequences of the same size. Target: under 5 s for the test part on CPU.

    .venv/bin/python benchmarks/bench_evaluate.py [--device cpu] [--batch-size 1024] [--repeats 3]

At catalogue scale (issue 26): ``--items N --users U`` ranks U generated users over N items (the time grows
with users x items; the evaluate stage's ``eval.max_users`` ranks a seeded sample of that many users, so the
seconds per 1,000 users below give its cost); ``--json`` writes wall seconds, seconds per 1,000 users, peak
RSS (GB) and the metrics (those of a random model: about hr@20 = 20 / N):

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluate.py --items 1000000 \
        --users 2000 --batch-size 256 --repeats 1 --mask-history on --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation.cases import build_eval_cases
from pipeline.evaluation.metrics import evaluate_scorer

BEAUTY = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amazon-beauty" / "Beauty.txt"
USERS, ITEMS = 22_363, 12_101


def beauty_sequences(path: Path) -> list[np.ndarray]:
    """``user item1 item2 ...`` per line -> per-user item arrays (the user column is dropped)."""
    with open(path) as f:
        return [np.array(line.split()[1:], dtype=np.int64) for line in f if line.strip()]


def generated_sequences(users: int, items: int, seed: int = 0) -> list[np.ndarray]:
    """Random sequences with Beauty's size and roughly its length distribution (min 5, mean ~9)."""
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1 / 4.9, size=users) - 1
    return [rng.integers(1, items + 1, size=int(n)) for n in lengths]


class RandomDotModel(torch.nn.Module):
    """A small embedding-dot model with random weights: mean of the input embeddings . item embeddings."""

    def __init__(self, num_items: int, dim: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.items = torch.nn.Parameter(torch.randn(num_items + 1, dim, generator=gen) / dim**0.5)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        emb = self.items[inputs] * (inputs > 0).unsqueeze(-1)  # (B, L, D), padding zeroed
        h = emb.sum(1) / (inputs > 0).sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return h @ self.items.T  # (B, N+1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--items", type=int, default=None, help="generated catalogue size (default: Beauty's data)"
    )
    ap.add_argument("--users", type=int, default=None, help="generated users (default: 22,363 with --items)")
    ap.add_argument("--mask-history", choices=("both", "on", "off"), default="both")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write seconds, peak RSS and the metrics here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.items is None and args.users is None and BEAUTY.exists():
        source, seqs = f"Beauty ({BEAUTY})", beauty_sequences(BEAUTY)
        num_items = max(int(s.max()) for s in seqs)
    else:
        num_items = args.items or ITEMS
        source, seqs = "generated", generated_sequences(args.users or USERS, num_items)
    lengths = np.array([len(s) for s in seqs])
    print(f"data: {source}: {len(seqs)} users, {num_items} items, {int(lengths.sum())} interactions")

    t0 = time.perf_counter()
    cases = build_eval_cases(seqs, lengths - 2, lengths - 1, "test", max_len=args.max_len)
    build_s = time.perf_counter() - t0
    print(f"build_eval_cases: {len(cases)} cases in {build_s:.2f} s")

    model = RandomDotModel(num_items).to(args.device).eval()
    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}, batch size: {args.batch_size}")
    runs = {}
    for mask in {"both": (True, False), "on": (True,), "off": (False,)}[args.mask_history]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            metrics, _ = evaluate_scorer(model, cases, [5, 10, 20], mask, args.batch_size, device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(
            f"evaluate_scorer (mask_history={mask}): best {min(times):.2f} s, median "
            f"{float(np.median(times)):.2f} s over {args.repeats} runs; "
            f"hr@20={metrics['hr_at_20']:.4f} ndcg@20={metrics['ndcg_at_20']:.4f} (random model)"
        )
        runs["mask_history" if mask else "no_mask"] = {
            "best_s": round(min(times), 3),
            "median_s": round(float(np.median(times)), 3),
            "s_per_1000_users": round(1000 * min(times) / len(cases), 3),
            "metrics": {k: round(float(v), 5) for k, v in metrics.items()},
        }

    # the share of the time spent scoring (the model's matmul) versus ranking and masking
    with torch.inference_mode():
        t0 = time.perf_counter()
        for s in range(0, len(cases), args.batch_size):
            model(cases.inputs[s : s + args.batch_size].to(args.device))
        scoring_s = time.perf_counter() - t0
        print(f"scoring alone: {scoring_s:.2f} s")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    wall = time.perf_counter() - t_start
    print(f"wall {wall:.1f} s (inputs, every repeat and the scoring pass), peak RSS {peak_gb:.2f} GB")
    if args.json is not None:
        result = {
            "benchmark": "evaluate",
            "data": source,
            "users": len(seqs),
            "items": num_items,
            "cases": len(cases),
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "repeats": args.repeats,
            "build_cases_s": round(build_s, 3),
            "runs": runs,
            "scoring_alone_s": round(scoring_s, 3),
            "wall_s": round(wall, 2),
            "peak_rss_gb": round(peak_gb, 3),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
