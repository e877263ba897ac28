"""Re-make the post-hoc choices of trained students on validation and evaluate them on test, without retraining.

A trained student's weights do not depend on the last-item prior or on ``train.exclude_seen``: both are chosen on
validation after training (``pipeline.training.prior``). This script loads the models that ``bench_train.py``
wrote (``<run>/models``), applies the post-hoc settings of ``--params`` (with ``--set`` overrides, e.g.
``train.prior_decay=0``), makes the same choice ``train`` makes, and ranks test: history masked, and with
``--unmasked`` also RecBole's protocol (the choice then made again on validation ranked the same way). For a
refreshed model (``train.refresh``) the choices are made with the network validation chose and carried to the
refreshed one, whose transition table then counts the validation steps too. Each row
is printed as JSON and, with ``--json``, written to one file; ``--ranks DIR`` saves each run's test ranks (for
paired tests between models).

    python benchmarks/bench_posthoc.py --params configs/scientific.yaml --data /tmp/sci --unmasked \\
        --runs /tmp/sci/bench/kdsr-seed0 /tmp/sci/bench/kdsr_twin-seed0 --json posthoc.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.threads import configure_threads  # noqa: E402 - sizes OpenMP before torch loads

configure_threads()

PROTOCOLS = {"masked": True, "unmasked": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder with processed/sequences.parquet")
    ap.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="bench_train run folders (with models/)"
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra dotted overrides")
    ap.add_argument("--unmasked", action="store_true", help="also RecBole's protocol (history not masked)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", type=Path, default=None, help="write every row here")
    ap.add_argument("--ranks", type=Path, default=None, help="save <run>_<protocol>_ranks.npy here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from pipeline.artifacts.sequences import read_sequences
    from pipeline.config import load_params, with_overrides
    from pipeline.evaluation.cases import load_eval_cases
    from pipeline.evaluation.metrics import evaluate_scorer
    from pipeline.experiments.plan import parse_overrides
    from pipeline.models import load_student
    from pipeline.models.persist import is_refreshed
    from pipeline.training.prior import make_posthoc_choices
    from pipeline.training.refresh import carry_choices

    torch.set_num_threads(args.threads)
    p = with_overrides(load_params(args.params), parse_overrides(args.set))
    sequences = args.data / "processed" / "sequences.parquet"
    device = torch.device("cpu")
    rows = []
    seqs = read_sequences(sequences)
    window, decay = p.train.transition_window, p.train.transition_decay
    for run in args.runs:
        model = load_student(run / "models", device).eval()
        model.cfg = dataclasses.replace(model.cfg, prior_decay=p.train.prior_decay)
        # a refreshed model (train.refresh): the choices are made with the network validation chose
        chooser = model
        if is_refreshed(run / "models"):
            chooser = load_student(run / "models", device, selected=True).eval()
            chooser.cfg = dataclasses.replace(chooser.cfg, prior_decay=p.train.prior_decay)
        valid = load_eval_cases(sequences, "valid", model.max_len)
        test = load_eval_cases(sequences, "test", model.max_len)
        row: dict = {"run": str(run), "prior_decay": p.train.prior_decay}
        for name, mask in PROTOCOLS.items():
            if not mask and not args.unmasked:
                continue
            ev = p.eval.model_copy(update={"mask_history": mask})
            chooser.cfg = dataclasses.replace(chooser.cfg, last_item_prior=0.0, exclude_seen=False)
            chooser.detach_transitions()
            make_posthoc_choices(chooser, valid, p.train, ev, device, sequences)
            if chooser is not model:
                carry_choices(chooser, model, seqs, window, decay)
            with torch.inference_mode():
                score = model.scorer()
            metrics, ranks = evaluate_scorer(score, test, ev.ks, mask, ev.batch_size)
            row[f"{name}_prior"] = model.cfg.last_item_prior
            row[f"{name}_transition_prior"] = model.cfg.transition_prior
            row[f"{name}_exclude_seen"] = model.cfg.exclude_seen
            row.update({f"{name}_test_{k}": v for k, v in metrics.items()})
            if args.ranks:
                args.ranks.mkdir(parents=True, exist_ok=True)
                np.save(args.ranks / f"{run.name}_{name}_ranks.npy", ranks)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
