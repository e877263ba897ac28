"""Training-step cost of settings side by side, interleaved so the machine's drift does not pick the winner.

Builds the training set-up of a config on prepared data (as ``bench_train.py``), then times rounds of
``--steps`` optimisation steps (forward, distillation terms, backward, AdamW) for each named setting in turn,
``--rounds`` times, and prints each setting's median seconds per step, its projected seconds per epoch and its
ratio to the first setting. This VM's speed drifts by up to 2x within an hour; alternating the settings in
short rounds puts the same drift on each.

    python benchmarks/bench_step.py --data /tmp/beauty                                  # float32 vs bfloat16
    python benchmarks/bench_step.py --data /tmp/beauty --settings "train.precision=float32" \\
        "train.precision=bfloat16" "train.precision=bfloat16 train.kd.code_weight=0"

Several ``--data`` folders time every setting on each, in the same rounds: a step on a catalogue of a million
items against a Beauty step (the generated catalogue from ``bench_correlate.py --items 1000000 --keep DIR``):

    python benchmarks/bench_step.py --data /tmp/beauty /tmp/items1m --threads 2 \\
        --settings "train.loss=sampled_softmax train.negatives=popularity" --json step_1m.json

Peak memory (the process's peak RSS, all set-ups included) is printed after the set-up and after the steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.threads import configure_threads  # noqa: E402 - sizes OpenMP before torch loads

configure_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    ap.add_argument(
        "--data", type=Path, nargs="+", required=True, help="folders with processed/ and supervision/"
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["train.precision=float32", "train.precision=bfloat16"],
        help="each a space-separated list of KEY=VALUE overrides",
    )
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()

    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def peak_gb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)

    from pipeline.config import load_params, with_overrides
    from pipeline.experiments.plan import parse_overrides
    from pipeline.layout import Layout
    from pipeline.training.batches import bucketed_batches
    from pipeline.training.distributed import DistInfo
    from pipeline.training.setup import build_training
    from pipeline.training.step import train_step

    base = with_overrides(load_params(args.params), {"mlflow.enabled": False, "train.device": "cpu"})
    gen = torch.Generator().manual_seed(0)  # the steps' sampling (negatives, pairs, dropout)
    runs = []  # (label, params, training set-up, batches, their order)
    for data in args.data:
        layout = Layout.flat(data)
        for setting in args.settings:
            p = with_overrides(base, parse_overrides(setting.split()))
            t = build_training(
                p.train,
                p.correlate.score,
                p.eval,
                layout.sequences,
                layout.supervision,
                data / "bench-step-ckpt",
                torch.device("cpu"),
            )
            t.model.train()
            order_gen = torch.Generator().manual_seed(0)  # the same batches for every setting of a folder
            batches = list(bucketed_batches(t.lengths, p.train.batch_size, order_gen))
            order = torch.randperm(len(batches), generator=order_gen).tolist()
            label = f"{data.name}: {setting}" if len(args.data) > 1 else setting
            runs.append((label, p, t, batches, order))
    setup_peak = peak_gb()
    print(f"set-up done, peak RSS {setup_peak} GB")

    def step(p, t, idx) -> None:  # the training loop's step, one process
        train_step(t, p.train, idx, gen, DistInfo())

    per_step: dict[str, list[float]] = {label: [] for label, *_ in runs}
    for _label, p, t, batches, order in runs:  # warm-up: allocator, oneDNN kernels
        for i in order[:3]:
            step(p, t, batches[i])
    for r in range(args.rounds):
        for label, p, t, batches, order in runs:  # within a data folder, the same batches for every setting
            picks = [order[(r * args.steps + k) % len(order)] for k in range(args.steps)]
            t0 = time.perf_counter()
            for i in picks:
                step(p, t, batches[i])
            per_step[label].append((time.perf_counter() - t0) / args.steps)
    first = statistics.median(per_step[runs[0][0]])
    rows = []
    print(f"\n{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    print("| run | items | s/step (median) | steps/epoch | s/epoch (projected) | ratio to first |")
    print("|---|--:|--:|--:|--:|--:|")
    for label, _p, t, batches, _order in runs:
        med = statistics.median(per_step[label])
        items = t.model.num_items
        rows.append({"run": label, "items": items, "s_per_step": med, "rounds": per_step[label]})
        print(
            f"| {label} | {items} | {med:.4f} | {len(batches)} | {med * len(batches):.1f} | {med / first:.3f} |"
        )
    print(f"peak RSS: {peak_gb()} GB (after the set-up: {setup_peak} GB; every set-up in one process)")
    if args.json:
        report = {
            "threads": torch.get_num_threads(),
            "peak_rss_gb": peak_gb(),
            "setup_peak_rss_gb": setup_peak,
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
