"""Training-step cost of settings side by side, interleaved so the machine's drift does not pick the winner.

Builds the training set-up of a config on prepared data (as ``bench_train.py``), then times rounds of
``--steps`` optimisation steps (forward, distillation terms, backward, AdamW) for each named setting in turn,
``--rounds`` times, and prints each setting's median seconds per step, its projected seconds per epoch and its
ratio to the first setting. This VM's speed drifts by up to 2x within an hour; alternating the settings in
short rounds puts the same drift on each.

    python benchmarks/bench_step.py --data /tmp/beauty                                  # float32 vs bfloat16
    python benchmarks/bench_step.py --data /tmp/beauty --settings "train.precision=float32" \\
        "train.precision=bfloat16" "train.precision=bfloat16 train.kd.code_weight=0"
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
    ap.add_argument("--data", type=Path, required=True, help="folder with processed/ and supervision/")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["train.precision=float32", "train.precision=bfloat16"],
        help="each a space-separated list of KEY=VALUE overrides",
    )
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from pipeline.config import load_params, with_overrides
    from pipeline.experiments.plan import parse_overrides
    from pipeline.layout import Layout
    from pipeline.training.batches import bucketed_batches
    from pipeline.training.distributed import DistInfo
    from pipeline.training.setup import build_training
    from pipeline.training.step import train_step

    base = with_overrides(load_params(args.params), {"mlflow.enabled": False, "train.device": "cpu"})
    runs = []
    for setting in args.settings:
        p = with_overrides(base, parse_overrides(setting.split()))
        t = build_training(
            p.train,
            p.correlate.score,
            p.eval,
            Layout.flat(args.data).sequences,
            Layout.flat(args.data).supervision,
            args.data / "bench-step-ckpt",
            torch.device("cpu"),
        )
        t.model.train()
        runs.append((setting, p, t))

    def step(p, t, idx, gen) -> None:  # the training loop's step, one process
        train_step(t, p.train, idx, gen, DistInfo())

    gen = torch.Generator().manual_seed(0)
    batches = list(bucketed_batches(runs[0][2].lengths, base.train.batch_size, gen))
    order = torch.randperm(len(batches), generator=gen).tolist()
    per_step: dict[str, list[float]] = {s: [] for s, _, _ in runs}
    for _setting, p, t in runs:  # warm-up: allocator, oneDNN kernels
        for i in order[:3]:
            step(p, t, batches[i], gen)
    for r in range(args.rounds):
        picks = [order[(r * args.steps + k) % len(order)] for k in range(args.steps)]
        for setting, p, t in runs:  # the same batches for every setting in a round
            t0 = time.perf_counter()
            for i in picks:
                step(p, t, batches[i], gen)
            per_step[setting].append((time.perf_counter() - t0) / args.steps)
    first = statistics.median(per_step[runs[0][0]])
    rows = []
    print(
        f"\n{torch.get_num_threads()} threads, {len(batches)} steps/epoch, {args.rounds} rounds x {args.steps}"
    )
    print("| setting | s/step (median) | s/epoch (projected) | ratio to first |\n|---|---|---|---|")
    for setting, _, _ in runs:
        med = statistics.median(per_step[setting])
        rows.append({"setting": setting, "s_per_step": med, "rounds": per_step[setting]})
        print(f"| {setting} | {med:.4f} | {med * len(batches):.1f} | {med / first:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
