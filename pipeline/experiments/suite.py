"""The experiment suite: shared data built once, then every (variant, seed) run trained and evaluated.

Layout under the suite folder ``out``::

    data/{processed,embeddings,supervision}/  shared artefacts: ingest -> embed -> correlate, base config
    data/<step>.params.json                   what each shared step was built with (unchanged -> skipped)
    runs/<variant>/seed<k>/                   models/, train_curve.csv, metrics.json, per_user.parquet,
                                              summary.json (timing), params.json (the run's config),
                                              checkpoints/ (while a run is unfinished)
    suite.json                                the plan: base params, variants and their overrides, seeds,
                                              each KDSR variant's twin
    results.md, results.json, *.png           written by :mod:`pipeline.experiments.report`

Every KDSR variant has a **twin** (:data:`TWINS`): the same overrides with the distillation weights at zero,
so the report can measure the effect of distillation alone, paired over users and over seeds.

Every step is resumable: a shared step whose outputs exist and whose params record matches is skipped, a
run whose ``metrics.json`` exists is skipped, and an interrupted run resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline.config import Params, with_overrides
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.evaluation.evaluate import run_evaluate
from pipeline.io import read_json, write_json
from pipeline.progress import progress_bar
from pipeline.supervision.correlate import run_correlate
from pipeline.teachers.embed import run_embed
from pipeline.tracking import file_digest, find_run_by_tag, start_run
from pipeline.training.trainer import run_train

log = logging.getLogger(__name__)

# name -> dotted overrides of the base config. "kdsr" is the base config itself (modality + both KD terms +
# asynchronous LR); popularity is not trained: it comes from every evaluate report. The twins of the KDSR
# variants are added below (see :func:`twin_overrides`).
_VARIANTS: dict[str, dict[str, Any]] = {
    "sasrec_id": {"train.modalities": []},
    "sasrec_modality": {
        "train.kd.holistic_weight": 0.0,
        "train.kd.code_weight": 0.0,
        "train.async_lr.schedule": "none",
    },
    "kdsr": {},
    "kdsr_holistic_only": {"train.kd.code_weight": 0.0},
    "kdsr_codes_only": {"train.kd.holistic_weight": 0.0},
    "kdsr_no_async": {"train.async_lr.schedule": "none"},
    "kdsr_gru4rec": {"train.backbone": "gru4rec"},
}
KD_WEIGHTS = ("train.kd.holistic_weight", "train.kd.code_weight")  # all a twin changes
TWIN_SUFFIX = "_twin"


def twin_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's twin: the same overrides with every distillation weight at zero (DESIGN §4).

    Same wiring, same asynchronous LR, same everything else, so variant - twin is the effect of KD alone;
    ``--set`` overrides go to the base config and so reach both members of a pair.
    """
    return {**overrides, **dict.fromkeys(KD_WEIGHTS, 0.0)}


def _distils(name: str, overrides: dict[str, Any]) -> bool:
    """Whether a variant is a KDSR configuration: a ``kdsr*`` variant that keeps a distillation term."""
    return name.startswith("kdsr") and not all(overrides.get(k) == 0 for k in KD_WEIGHTS)


def _add_twins(variants: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``variants`` with a ``<name>_twin`` after each KDSR variant, and the map variant -> its twin.

    A twin whose overrides equal those of a variant already there is not added: that variant is the twin
    (``kdsr_holistic_only`` and ``kdsr_codes_only`` share ``kdsr_twin``; ``kdsr_no_async``'s is
    ``sasrec_modality``).
    """
    out: dict[str, dict[str, Any]] = {}
    twins: dict[str, str] = {}
    for name, overrides in variants.items():
        out[name] = overrides
        if not _distils(name, overrides):
            continue
        twin = twin_overrides(overrides)
        same = next((v for v, o in {**variants, **out}.items() if o == twin), None)
        twins[name] = same or name + TWIN_SUFFIX
        if same is None:
            out[name + TWIN_SUFFIX] = twin
    return out, twins


VARIANTS, TWINS = _add_twins(_VARIANTS)
MAIN_VARIANTS = ("sasrec_id", "sasrec_modality", "kdsr", "kdsr_twin")  # run over `seeds` seeds
ABLATIONS = tuple(v for v in VARIANTS if v not in MAIN_VARIANTS)  # `ablation_seeds` seeds
BASELINES = ("sasrec_id", "sasrec_modality")  # the non-distillation baselines KDSR is compared with
SHARED_STEPS = ("ingest", "embed", "correlate")
SUITE_FILE = "suite.json"
UNTRACKED: dict[str, Any] = {"mlflow": True, "embed": {"cache_dir"}}  # keys that never change a result
SUITE_TAG = "suite.out"  # MLflow tag on the parent run: the absolute suite folder


@dataclass(frozen=True)
class SharedData:
    """Where the shared artefacts of a suite live, and a digest of what they were built with."""

    root: Path
    digest: str

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def supervision(self) -> Path:
        return self.root / "supervision"

    @property
    def sequences(self) -> Path:
        return self.processed / "sequences.parquet"


@dataclass(frozen=True)
class RunSpec:
    """One training + evaluation run of the suite."""

    variant: str
    seed_index: int
    params: Params
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed_index}"


# --------------------------------------------------------------------------------------------- planning
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=5", "train.modalities=[text]"]`` -> ``{"train.epochs": 5, ...}`` (values as YAML).

    Raises:
        PipelineError: an item without ``=`` or with a value that is not valid YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise PipelineError(f"--set {item!r}: value is not valid YAML ({err})") from None
    return out


def variant_seeds(
    variants: Sequence[str] | None, seeds: int, ablation_seeds: int, twins: bool = True
) -> dict[str, int]:
    """How many seeds each requested variant runs over (all variants when ``variants`` is None).

    With ``twins`` each KDSR variant brings its twin (:data:`TWINS`), placed right after it and run over at
    least as many seeds, so every seed of the variant has its twin. Without, ``variants=None`` means the
    variants other than the added ``*_twin`` ones.
    """
    if variants is None:
        names = [v for v in VARIANTS if twins or v in _VARIANTS]
    else:
        names = list(dict.fromkeys(variants))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise PipelineError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if seeds < 1 or ablation_seeds < 1:
        raise PipelineError(f"seeds ({seeds}) and ablation seeds ({ablation_seeds}) must be >= 1")
    own = {v: (ablation_seeds if v in ABLATIONS else seeds) for v in names}
    if not twins:
        return own
    counts: dict[str, int] = {}
    for v in names:
        counts[v] = max(counts.get(v, 0), own[v])
        if v in TWINS:
            twin = TWINS[v]
            counts[twin] = max(counts.get(twin, 0), own.get(twin, 0), own[v])
    return counts


def plan_runs(base: Params, out: Path, counts: dict[str, int]) -> list[RunSpec]:
    """The runs of a suite, seed-major: each variant's overrides applied to ``base``, seed k -> train.seed + k.

    Raises:
        PipelineError: a modality variant while the base config has no modality, or overrides that do not
            validate.
    """
    specs: list[RunSpec] = []
    for variant, n in counts.items():
        if variant != "sasrec_id" and not base.train.modalities:
            raise PipelineError(
                f"variant {variant!r} needs modalities, but the base config has train.modalities: []"
            )
        for k in range(n):
            params = with_overrides(base, {**VARIANTS[variant], "train.seed": base.train.seed + k})
            specs.append(RunSpec(variant, k, params, Path(out) / "runs" / variant / f"seed{k}"))
        kd = with_overrides(base, VARIANTS[variant]).train.kd
        if variant in TWINS and kd.holistic_weight == kd.code_weight == 0:
            log.warning("variant %s distils nothing under this config: it equals its twin", variant)
    # main variants seed-major (every variant's first seed before any second seed, so a partial suite is
    # comparable), then the ablations
    return sorted(specs, key=lambda s: (s.variant in ABLATIONS, s.seed_index))


# --------------------------------------------------------------------------------------------- shared data
def run_ingest(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`pipeline.data.ingest.run_ingest`, imported only when ingest runs: polars is then needed only
    where the shared data is built (a GPU machine without polars can run a suite whose data exists)."""
    from pipeline.data.ingest import run_ingest as ingest  # noqa: PLC0415

    return ingest(*args, **kwargs)


def _normalised(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), so records compare equal across runs."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_record(path: Path) -> Any:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def _step_records(base: Params) -> dict[str, dict[str, Any]]:
    """What each shared step's outputs depend on; each record chains its upstream step's digest."""
    modalities = list(base.train.modalities)
    inputs: dict[str, str] = {}
    if base.data.source == "sequences":  # the input files are small: hash them so edits are noticed
        for f in (base.data.sequences_file, base.data.items_file):
            if Path(f).exists():
                inputs[f] = file_digest(f)
    records: dict[str, dict[str, Any]] = {}
    upstream = None
    for step, params in (
        ("ingest", {"data": base.data.model_dump(), "inputs": inputs}),
        (
            "embed",
            {"embed": base.embed.model_dump(exclude=UNTRACKED["embed"]), "train.modalities": modalities},
        ),
        ("correlate", {"correlate": base.correlate.model_dump(), "train.modalities": modalities}),
    ):
        records[step] = _normalised({"step": step, "params": params, "upstream": upstream})
        upstream = _digest(records[step])
    return records


def _step_outputs(step: str, root: Path, modalities: Sequence[str]) -> list[Path]:
    if step == "ingest":
        return [root / "processed" / "items.parquet", root / "processed" / "sequences.parquet"]
    if step == "embed":
        return [root / "embeddings", *(root / "embeddings" / f"{m}.parquet" for m in modalities)]
    return [
        root / "supervision" / "stats.json",
        *(root / "supervision" / f"teacher_{m}.parquet" for m in modalities),
        *(root / "supervision" / f"codebook_{m}.safetensors" for m in modalities),
    ]


def shared_data(base: Params, root: Path) -> SharedData:
    """Where ``base``'s shared artefacts live under ``root`` and their digest (computes nothing)."""
    return SharedData(Path(root), _digest(_step_records(base)["correlate"]))


def prepare_shared(base: Params, root: Path) -> SharedData:
    """Run ingest -> embed -> correlate into ``root/{processed,embeddings,supervision}`` with ``base``.

    A step is skipped when its outputs exist and ``root/<step>.params.json`` equals what it would be built
    with now (its params and its upstream step's record); a rerun step makes every later step rerun.
    """
    root = Path(root)
    modalities = list(base.train.modalities)
    records = _step_records(base)
    calls: dict[str, Callable[[], Any]] = {
        "ingest": lambda: run_ingest(
            base.data, base.mlflow, out_dir=root / "processed", stats_path=root / "data_stats.json"
        ),
        "embed": lambda: run_embed(
            base.embed,
            modalities,
            base.mlflow,
            items_path=root / "processed" / "items.parquet",
            out_dir=root / "embeddings",
        ),
        "correlate": lambda: run_correlate(
            base.correlate,
            modalities,
            base.mlflow,
            embeddings_dir=root / "embeddings",
            sequences_path=root / "processed" / "sequences.parquet",
            out_dir=root / "supervision",
        ),
    }
    for step in SHARED_STEPS:
        record_path = root / f"{step}.params.json"
        outputs = _step_outputs(step, root, modalities)
        if all(p.exists() for p in outputs) and _read_record(record_path) == records[step]:
            log.info("shared %s: up to date (%s), skipped", step, record_path)
            continue
        record_path.unlink(missing_ok=True)  # no record survives a step that fails half-way
        t0 = time.perf_counter()
        log.info("shared %s: running", step)
        calls[step]()
        write_json(record_path, records[step])
        log.info("shared %s: done in %.1f s", step, time.perf_counter() - t0)
    return shared_data(base, root)


# --------------------------------------------------------------------------------------------- one run
@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}

    def apply(vals: dict[str, str | None]) -> None:
        for k, v in vals.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    apply(values)
    try:
        yield
    finally:
        apply(old)


def _run_record(spec: RunSpec, shared: SharedData) -> dict[str, Any]:
    """What a run's results depend on: its whole config (tracking aside) and the shared data it used."""
    return _normalised({"params": spec.params.model_dump(exclude=UNTRACKED), "data": shared.digest})


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
    return _normalised({"params": Params.model_validate({}).model_dump(exclude=UNTRACKED)})


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
        if (s.run_dir / "metrics.json").exists()
        and (stored := _read_record(s.run_dir / "params.json")) is not None
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
    metrics_path, summary_path, params_path = d / "metrics.json", d / "summary.json", d / "params.json"
    previous = _read_record(params_path)
    if metrics_path.exists():
        summary = _read_record(summary_path) or {}
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
    model_dir = d / "models"
    summary = _read_record(summary_path)
    with _environment({"KDSR_MLFLOW_PARENT": parent_run_id, "KDSR_RUN_NAME": spec.name}):
        if summary is None or not (model_dir / "model.safetensors").exists():
            # an earlier attempt that trained but did not evaluate keeps its model: only evaluation reruns
            summary = run_train(
                p.train,
                p.correlate.score,
                p.eval,
                p.mlflow,
                sequences_path=shared.sequences,
                supervision_dir=shared.supervision,
                model_dir=model_dir,
                curve_path=d / "train_curve.csv",
                checkpoint_root=d / "checkpoints",
                progress=progress,
            )
            summary = {
                "variant": spec.variant,
                "seed_index": spec.seed_index,
                "train_seed": p.train.seed,
                **{k: v for k, v in summary.items() if k != "finished"},
            }
            write_json(summary_path, summary)
        t_eval = time.perf_counter()
        report = run_evaluate(
            p.eval,
            p.mlflow,
            sequences_path=shared.sequences,
            model_dir=model_dir,
            metrics_path=metrics_path,
            per_user_path=d / "per_user.parquet",
            device=resolve_device(p.train.device),
            progress=progress,
        )
    summary["eval_seconds"] = time.perf_counter() - t_eval
    write_json(summary_path, summary)
    with contextlib.suppress(OSError):
        (d / "checkpoints").rmdir()  # empty once training finished
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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    old = _read_record(path) or {}
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
    report: bool = True,
    twins: bool = True,
) -> list[dict[str, Any]]:
    """Run the experiment suite into ``out`` (see the module docstring) and, by default, its report.

    Args:
        base: the base config (the ``kdsr`` variant); every variant is a set of overrides of it.
        out: the suite folder; its name names the suite's MLflow parent run.
        variants: which variants to run (default: all of :data:`VARIANTS`; see :func:`variant_seeds`).
        seeds: seeds of the main variants (:data:`MAIN_VARIANTS`).
        ablation_seeds: seeds of the ablations (:data:`ABLATIONS`).
        jobs: runs at once; above 1 each run is a spawned process with ``cores // jobs`` torch threads.
        progress: progress bars (per-epoch bars only when ``jobs`` is 1).
        report: write ``results.md``/``results.json`` and plots at the end.
        twins: add each requested KDSR variant's twin (:data:`TWINS`) with the variant's seeds.

    Returns:
        One result per run (see :func:`execute_run`), in plan order.

    Raises:
        PipelineError: bad plan or config, a failing shared step, or runs that failed (after every other run
            finished and the report was written).
    """
    out = Path(out)
    if jobs < 1:
        raise PipelineError(f"--jobs must be >= 1, got {jobs}")
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
            except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
                log.exception("run %s failed", spec.name)
                failures[spec.name] = f"{type(err).__name__}: {err}"
            bar.update(1)

        if jobs == 1:
            for spec in specs:
                collect(spec, lambda s=spec: execute_run(s, shared, tracker.run_id, progress))
        else:
            threads = max(1, _cores() // jobs)
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
        if report and results:
            from pipeline.experiments.report import write_report  # noqa: PLC0415 - scipy, matplotlib

            write_report(out, tracker=tracker)
    if failures:
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in failures.items())
        raise PipelineError(f"{len(failures)} of {len(specs)} runs failed (the others are kept):\n{lines}")
    return [results[s.name] for s in specs]
