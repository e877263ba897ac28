"""The experiment suite: shared data built once, then every (variant, seed) run trained and evaluated.

Layout under the suite folder ``out``::

    data/{processed,embeddings,supervision}/  shared artefacts: ingest -> embed -> correlate, base config
    data/<step>.params.json                   what each shared step was built with (unchanged -> skipped)
    runs/<variant>/seed<k>/                   models/, train_curve.csv, metrics.json, per_user.parquet,
                                              summary.json (timing), params.json (the run's config),
                                              checkpoints/ (while a run is unfinished)
    suite.json                                the plan: base params, variants and their overrides, seeds,
                                              each KDSR variant's twin
    results.md, results.json, *.png           written afterwards by :mod:`pipeline.experiments.report`

What runs is planned in :mod:`pipeline.experiments.plan` (variants, their twins, seeds); the shared data is
built by :mod:`pipeline.experiments.shared`.

Every step is resumable: a shared step whose outputs exist and whose params record matches is skipped, a
run whose ``metrics.json`` exists is skipped, and an interrupted run resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params
from pipeline.devices import resolve_device
from pipeline.environ import scoped_environ
from pipeline.errors import PipelineError
from pipeline.experiments.plan import (
    RUN_PARAMS,
    RUN_SUMMARY,
    SUITE_FILE,
    SUITE_TAG,
    TWINS,
    UNTRACKED,
    VARIANTS,
    RunSpec,
    plan_runs,
    variant_seeds,
)
from pipeline.experiments.shared import SharedData, normalised, prepare_shared, read_record, shared_data
from pipeline.io import output_lock, read_json, write_json
from pipeline.progress import progress_bar
from pipeline.runner import run_stage
from pipeline.threads import cpu_budget
from pipeline.tracking import find_run_by_tag, start_run

log = logging.getLogger(__name__)


class RunsFailed(PipelineError):
    """Some runs of a suite failed; ``results`` holds the finished (and skipped) runs' results in plan order."""

    def __init__(self, message: str, results: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.results = results


# --------------------------------------------------------------------------------------------- one run
def _run_record(spec: RunSpec, shared: SharedData) -> dict[str, Any]:
    """What a run's results depend on: its whole config (tracking aside) and the shared data it used."""
    return normalised({"params": spec.params.model_dump(exclude=UNTRACKED), "data": shared.digest})


def _fill_new_defaults(stored: Any, current: Any, defaults: Any) -> Any:
    """``stored`` with each key it lacks taken from ``current`` where ``current`` holds that key's default."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return stored
    defaults = defaults if isinstance(defaults, dict) else {}
    out = dict(stored)
    for k, v in current.items():
        if k in out:
            out[k] = _fill_new_defaults(out[k], v, defaults.get(k))
        elif k in defaults and v == defaults[k]:
            out[k] = v
    return out


@functools.cache
def _default_record() -> dict[str, Any]:
    """The run record's ``params`` part at every option's default (no shared-data digest)."""
    return normalised({"params": Params.model_validate({}).model_dump(exclude=UNTRACKED)})


def _same_run(stored: Any, current: dict[str, Any]) -> bool:
    """Whether a run folder's recorded config is ``current``'s; a record written before an option existed
    matches a run that leaves that option at its default, so a new option does not invalidate finished runs."""
    return stored == current or _fill_new_defaults(stored, current, _default_record()) == current


def _top_k(metrics: dict[str, float]) -> int:
    ks = sorted(int(k.rsplit("_", 1)[1]) for k in metrics if k.startswith("ndcg_at_"))
    return 20 if 20 in ks else ks[-1]


def stale_runs(specs: Sequence[RunSpec], shared: SharedData) -> list[Path]:
    """Run folders holding finished results of another config or other shared data than ``specs``."""
    return [
        s.run_dir
        for s in specs
        if shared.run_layout(s.run_dir).metrics.exists()
        and (stored := read_record(s.run_dir / RUN_PARAMS)) is not None
        and not _same_run(stored, _run_record(s, shared))
    ]


def execute_run(
    spec: RunSpec, shared: SharedData, parent_run_id: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Train and evaluate one run into ``spec.run_dir``; skip it when its ``metrics.json`` exists.

    Training resumes from the run's last epoch checkpoint, and a run that trained but was not evaluated
    only evaluates. ``parent_run_id`` nests its MLflow runs under the suite's run.

    Returns:
        ``{"variant", "seed", "status" ("done" | "skipped"), "best_epoch", "test", "seconds"}``.
    """
    d, record = Path(spec.run_dir), _run_record(spec, shared)
    metrics_path, summary_path, params_path = (
        shared.run_layout(d).metrics,
        d / RUN_SUMMARY,
        d / RUN_PARAMS,
    )
    previous = read_record(params_path)
    if metrics_path.exists():
        summary = read_record(summary_path) or {}
        return {
            "variant": spec.variant,
            "seed": spec.seed_index,
            "status": "skipped",
            "best_epoch": summary.get("best_epoch"),
            "test": read_json(metrics_path)["test"],
            "seconds": 0.0,
        }
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    if previous is None or not _same_run(previous, record):
        summary_path.unlink(missing_ok=True)  # a model of another config must not be evaluated
        write_json(params_path, record)
    p = spec.params
    layout = shared.run_layout(d)
    summary = read_record(summary_path)
    with scoped_environ({"KDSR_MLFLOW_PARENT": parent_run_id, "KDSR_RUN_NAME": spec.name}):
        if summary is None or not layout.model_weights.exists():
            # an earlier attempt that trained but did not evaluate keeps its model: only evaluation reruns
            summary = run_stage("train", p, layout, progress=progress)
            summary = {
                "variant": spec.variant,
                "seed_index": spec.seed_index,
                "train_seed": p.train.seed,
                **{k: v for k, v in summary.items() if k != "finished"},
            }
            write_json(summary_path, summary)
        t_eval = time.perf_counter()
        report = run_stage("evaluate", p, layout, progress=progress, device=resolve_device(p.train.device))
    summary["eval_seconds"] = time.perf_counter() - t_eval
    write_json(summary_path, summary)
    with contextlib.suppress(OSError):
        layout.checkpoints.rmdir()  # empty once training finished
    return {
        "variant": spec.variant,
        "seed": spec.seed_index,
        "status": "done",
        "best_epoch": summary.get("best_epoch"),
        "test": report["test"],
        "seconds": time.perf_counter() - t0,
    }


def _init_worker(threads: int, log_level: int) -> None:
    """Pool initializer: spawned workers share the cores and log like the parent process."""
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    torch.set_num_threads(threads)


def _log_result(res: dict[str, Any]) -> None:
    test = res["test"]
    k = _top_k(test)
    log.info(
        "%s %s seed %d: best epoch %s, test hr@%d %.4f ndcg@%d %.4f, %.1f s",
        "finished" if res["status"] == "done" else "skipped (finished earlier)",
        res["variant"],
        res["seed"],
        res["best_epoch"],
        k,
        test[f"hr_at_{k}"],
        k,
        test[f"ndcg_at_{k}"],
        res["seconds"],
    )


# --------------------------------------------------------------------------------------------- the suite
def _write_suite_file(out: Path, base: Params, counts: dict[str, int]) -> None:
    """Record the plan in ``suite.json``, merged with earlier invocations' variants (a suite grows)."""
    path = out / SUITE_FILE
    old = read_record(path) or {}
    seeds = {**old.get("seeds", {}), **counts}
    write_json(
        path,
        {
            "name": out.name,
            "params": base.model_dump(),
            "seeds": seeds,
            "variants": {v: VARIANTS[v] for v in seeds if v in VARIANTS},
            "twins": {v: TWINS[v] for v in seeds if v in TWINS and TWINS[v] in seeds},
        },
    )


def run_suite(
    base: Params,
    out: Path,
    variants: Sequence[str] | None = None,
    seeds: int = 3,
    ablation_seeds: int = 1,
    jobs: int = 1,
    progress: bool = True,
    twins: bool = True,
) -> list[dict[str, Any]]:
    """Run the experiment suite into ``out`` (see the module docstring); the report is a separate step.

    Args:
        base: the base config (the ``kdsr`` variant); every variant is a set of overrides of it.
        out: the suite folder; its name names the suite's MLflow parent run.
        variants: which variants to run (default: all of :data:`VARIANTS`; see :func:`variant_seeds`).
        seeds: seeds of the main variants (:data:`MAIN_VARIANTS`).
        ablation_seeds: seeds of the ablations (:data:`ABLATIONS`).
        jobs: runs at once; above 1 each run is a spawned process with ``cores // jobs`` torch threads.
        progress: progress bars (per-epoch bars only when ``jobs`` is 1).
        twins: add each requested KDSR variant's twin (:data:`TWINS`) with the variant's seeds.

    Returns:
        One result per run (see :func:`execute_run`), in plan order.

    Raises:
        PipelineError: bad plan or config, or a failing shared step.
        OutputLocked: another live suite (or report) holds ``out``.
        RunsFailed: runs that failed, after every other run finished (their results in ``.results``).
    """
    out = Path(out)
    if jobs < 1:
        raise PipelineError(f"--jobs must be >= 1, got {jobs}")
    with output_lock(out):  # a second suite into the same folder stops here, before reading anything
        return _run_suite(base, out, variants, seeds, ablation_seeds, jobs, progress, twins)


def _run_suite(
    base: Params,
    out: Path,
    variants: Sequence[str] | None,
    seeds: int,
    ablation_seeds: int,
    jobs: int,
    progress: bool,
    twins: bool,
) -> list[dict[str, Any]]:
    counts = variant_seeds(variants, seeds, ablation_seeds, twins)
    specs = plan_runs(base, out, counts)
    stale = stale_runs(specs, shared_data(base, out / "data"))
    if stale:
        raise PipelineError(
            "finished runs of another config or other shared data than this suite's (see their "
            "params.json); delete those folders to rerun them, or use another --out:\n"
            + "\n".join(f"  - {d}" for d in stale)
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_suite_file(out, base, counts)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    suite_tag = str(out.resolve())
    parent_id = find_run_by_tag(base.mlflow, SUITE_TAG, suite_tag)  # a resumed suite keeps its parent run
    with start_run(
        "suite", base.mlflow, run_name=out.name, tags={SUITE_TAG: suite_tag}, run_id=parent_id
    ) as tracker:
        if parent_id is None:  # MLflow refuses to change a logged param: a resumed parent keeps its own
            tracker.log_params(base.model_dump(exclude={"mlflow"}))
        tracker.log_dict(read_json(out / SUITE_FILE), SUITE_FILE)
        shared = prepare_shared(base, out / "data")
        log.info("suite %s: %d runs of %d variants, %d at once", out.name, len(specs), len(counts), jobs)
        bar = progress_bar(total=len(specs), desc="suite runs", unit="run", disable=not progress)

        def collect(spec: RunSpec, get: Callable[[], dict[str, Any]]) -> None:
            try:
                results[spec.name] = res = get()
                _log_result(res)
            except PipelineError as err:  # an expected failure (e.g. diverged): its message says it all
                log.error("run %s failed: %s", spec.name, err)
                failures[spec.name] = str(err)
            except Exception as err:  # one failed run must not lose the others
                log.exception("run %s failed", spec.name)
                failures[spec.name] = f"{type(err).__name__}: {err}"
            bar.update(1)

        if jobs == 1:
            for spec in specs:
                collect(spec, lambda s=spec: execute_run(s, shared, tracker.run_id, progress))
        else:
            threads = max(1, cpu_budget() // jobs)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads, logging.getLogger().level)
            ) as pool:
                futures: dict[Future, RunSpec] = {
                    pool.submit(execute_run, s, shared, tracker.run_id, False): s for s in specs
                }
                for fut in as_completed(futures):
                    collect(futures[fut], fut.result)
        bar.close()
    if failures:
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in failures.items())
        raise RunsFailed(
            f"{len(failures)} of {len(specs)} runs failed (the others are kept):\n{lines}",
            [results[s.name] for s in specs if s.name in results],
        )
    return [results[s.name] for s in specs]
