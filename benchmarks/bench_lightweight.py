"""The "lightweight" table: what distillation costs next to ID-only SASRec and the text model without it.

For each variant (default: ``sasrec_id``, ``kdsr_twin`` = the text model with the distillation weights at 0,
``kdsr``) this trains one model in its own process (so its peak memory is its own) with
``benchmarks/bench_train.py``, then measures, on the trained model:

- trainable parameters (frozen buffers such as teacher vectors excluded) and their float32 size;
- training seconds per epoch (validation included) and seconds to the best validation epoch;
- peak resident memory of the training process (and of the GPU on CUDA);
- inference: full-catalogue scoring of every user's test case (the evaluator's batches, history masked,
  top-20 per user) and one user's top-10 latency (median and p95 over ``--latency-users`` single calls, with
  the item side computed once, as :class:`pipeline.recommend.topk.Recommender` serves a model; with the
  last-item prior its blocks are part of it).

    python benchmarks/bench_lightweight.py --data /tmp/beauty                     # prepared as for bench_train
    python benchmarks/bench_lightweight.py --data /tmp/beauty --set train.epochs=3 --json out.json

The threads are the process's CPU budget (``pipeline.threads``) unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.layout import Layout  # noqa: E402
from pipeline.threads import configure_threads  # noqa: E402 - sizes OpenMP before torch loads

configure_threads()

DEFAULT_VARIANTS = ["sasrec_id", "kdsr_twin", "kdsr"]


def train_variant(args: argparse.Namespace, variant: str, out: Path) -> dict:
    """Train one variant in a fresh process (its own peak memory) and return bench_train's row."""
    result = out / f"{variant}.train.json"
    if args.reuse and result.exists():
        return json.loads(result.read_text())["results"][0]
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_train.py"),
        "--params",
        str(args.params),
        "--data",
        str(args.data),
        "--variants",
        variant,
        "--seeds",
        str(args.seed),
        "--out",
        str(out),
        "--json",
        str(result),
        "--threads",
        str(args.threads),
    ]
    if args.device:
        cmd += ["--device", args.device]
    if args.set:
        cmd += ["--set", *args.set]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())["results"][0]


def inference_costs(model_dir: Path, sequences: Path, device: str, users: int, k: int = 10) -> dict:
    """Full-catalogue scoring of every test case, and single-user top-k latency."""
    import numpy as np
    import torch

    from pipeline.evaluation.cases import load_eval_cases
    from pipeline.evaluation.metrics import evaluate_scorer
    from pipeline.models import load_student
    from pipeline.recommend.topk import top_k

    model = load_student(model_dir, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.inference_mode():  # as the evaluator and a served model do: the item side once, not per call
        score = model.scorer()
    cases = load_eval_cases(sequences, "test", model.cfg.max_len)
    evaluate_scorer(score, cases, [20], True, 1024, device)  # warm-up
    t0 = time.perf_counter()
    evaluate_scorer(score, cases, [20], True, 1024, device)
    all_users_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    picks = rng.choice(len(cases), size=min(users, len(cases)), replace=False)
    times = []
    with torch.inference_mode():
        for n, c in enumerate(picks):
            inputs = cases.inputs[c : c + 1].to(device)
            lo, hi = int(cases.hist_indptr[c]), int(cases.hist_indptr[c + 1])
            indptr = np.array([0, hi - lo])
            t0 = time.perf_counter()
            items, _ = top_k(score(inputs), k, indptr, cases.hist_items[lo:hi])
            items.cpu()
            if device == "cuda":
                torch.cuda.synchronize()
            if n >= 5:  # the first calls warm caches
                times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "trainable_params": trainable,
        "trainable_mb_fp32": round(trainable * 4 / 2**20, 2),
        "score_all_users_s": round(all_users_s, 3),
        "users": len(cases),
        "users_per_s": round(len(cases) / all_users_s),
        "one_user_top10_ms_median": round(1000 * statistics.median(times), 2),
        "one_user_top10_ms_p95": round(1000 * times[int(0.95 * (len(times) - 1))], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder with processed/ and supervision/")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: the params file's train.device)")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides (all variants)"
    )
    ap.add_argument("--threads", type=int, default=int(os.environ["OMP_NUM_THREADS"]))
    ap.add_argument("--latency-users", type=int, default=200)
    ap.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    ap.add_argument(
        "--out", type=Path, default=None, help="models and per-variant JSON (default <data>/light)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args()
    out = args.out or args.data / "light"
    out.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" or (args.device is None and torch.cuda.is_available()) else "cpu"
    rows = []
    for variant in args.variants:
        train = train_variant(args, variant, out)
        model_dir = Layout.bench_run(args.data, out, variant, args.seed).models
        cost = inference_costs(model_dir, Layout.flat(args.data).sequences, device, args.latency_users)
        row = {
            "variant": variant,
            **cost,
            "seconds_per_epoch": train["seconds_per_epoch"],
            "best_epoch": train["best_epoch"],
            "epochs_run": train["epochs_run"],
            "seconds_to_best": train["seconds_to_best"],
            "peak_rss_gb": train["peak_rss_gb"],
            **({"peak_gpu_gb": train["peak_gpu_gb"]} if "peak_gpu_gb" in train else {}),
            "test_hr_at_20": train["test_hr_at_20"],
            "test_ndcg_at_20": train["test_ndcg_at_20"],
            "machine": train["machine"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = [
        ("variant", "variant"),
        ("trainable_params", "trainable params"),
        ("seconds_per_epoch", "s/epoch"),
        ("best_epoch", "best epoch"),
        ("seconds_to_best", "s to best"),
        ("peak_rss_gb", "peak RSS GB"),
        ("score_all_users_s", "score all users s"),
        ("one_user_top10_ms_median", "1-user top-10 ms (median)"),
        ("one_user_top10_ms_p95", "p95"),
        ("test_ndcg_at_20", "test NDCG@20"),
    ]
    print(f"\n{rows[0]['machine']} ({device})")
    print("| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [
            f"{r[k]:,}" if isinstance(r[k], int) else (f"{r[k]:.4f}" if k.startswith("test") else str(r[k]))
            for k, _ in cols
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
