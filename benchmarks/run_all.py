"""Benchmark every pipeline stage on three scenarios and print one table (Markdown) + write it as JSON.

    make bench                                     # = .venv/bin/python benchmarks/run_all.py
    make bench-quick                               # tiny sizes: a smoke test of the whole runner
    .venv/bin/python benchmarks/run_all.py --scenarios demo beauty --stages train evaluate --epochs 3 \\
        --device cuda

Scenarios:
  demo    the project's params.yaml (the deterministic demo data set, text + image teachers).
  beauty  configs/beauty.yaml on ../shared/data/amazon-beauty (skipped, with a note, when it is absent).
  large   ingest: a generated Amazon-2014 ratings CSV + metadata of --large-items items and
          --large-interactions interactions (default 1,000,000 / 10,000,000);
          embed -> correlate -> train -> evaluate: a generated demo catalogue of --large-catalogue items
          (default 100,000; text only, 1.85 users per item like Beauty), so correlate builds a 100k-item
          top-k. Both inputs are generated once per work dir, unmeasured, and reused while their sizes match.

Every stage runs in its own child process (``python -m``-like, from the project root, MLflow off), so the
numbers are per stage: wall seconds of the process (start-up and imports included), seconds of the stage
function alone, peak RSS (the child's own address space, VmHWM, or a process it started if larger; the
parent's ``wait4`` figure is kept as ``peak_rss_wait4_mb``: Linux counts the image a child replaced at exec,
so that one never drops below the runner's own RSS), CPU seconds (user + system; CPU s / stage s ~ cores kept busy), a throughput (ingest: raw
interactions/s; embed, correlate: items/s per modality summed; train: training sequences/s, the harmonic
mean over epochs; evaluate: evaluated sequences/s, validation + test), the device and, where CUDA is used,
the GPU name and peak allocated/reserved memory. The embed cache is emptied before embed (a cold run) and
train never resumes from a checkpoint.

Stages read what the earlier stages wrote into the same work dir (default /tmp/kdsr-bench/<scenario>),
so ``--stages train evaluate`` reuses the data of an earlier run; a stage whose input is missing is
reported as failed with the command that builds it. Results go to
benchmarks/results/<host>-<date>.json (and a .md next to it); each stage's log to <work>/logs/<stage>.log.
The exit status is 1 when a stage failed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import (  # noqa: E402
    DataParams,
    DemoParams,
    MLflowParams,
    Params,
    load_params,
    with_overrides,
)
from pipeline.io import atomic_path, read_json, write_json  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from pipeline.runner import run_stage  # noqa: E402
from pipeline.tracking import git_rev  # noqa: E402

STAGES = ("ingest", "embed", "correlate", "train", "evaluate")
SCENARIOS = ("demo", "beauty", "large")
# what each stage reads from the earlier ones ("data": ingest's output, or the large scenario's catalogue)
DEPENDS = {
    "ingest": (),
    "embed": ("data",),
    "correlate": ("data", "embed"),
    "train": ("data", "correlate"),
    "evaluate": ("data", "train"),
}
MARKER = ".kdsr-bench"  # marks a work dir this script created (--fresh only deletes such folders)
LARGE_DEFAULTS = {"large_items": 1_000_000, "large_interactions": 10_000_000, "large_catalogue": 100_000}
LARGE_EPOCHS = 2  # the large scenario's training budget unless --epochs is given
USERS_PER_ITEM = 1.85  # Amazon Beauty's ratio (22,363 users / 12,101 items)
QUICK = {
    "demo_users": 300,
    "demo_items": 120,
    "demo_families": 6,
    "large_items": 20_000,
    "large_interactions": 200_000,
    "large_catalogue": 20_000,
    "epochs": 1,
}

log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------- measuring
@dataclass
class Measured:
    """What the parent sees of one child process."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    timed_out: bool = False


def _rss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def own_peak_rss_mb() -> float:
    """Peak RSS of this process's address space since its exec (``VmHWM``), or of the largest process it
    waited for if that is larger (a worker forked from it)."""
    own = None
    try:
        with open("/proc/self/status") as f:
            own = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), None)
    except OSError:  # no procfs (macOS): the rusage figure
        pass
    if own is None:
        own = _rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return max(own, _rss_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))


def measure_subprocess(
    cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None, timeout_s: float | None = None
) -> Measured:
    """Run ``cmd`` from the project root with its output in ``log_path``; time it and read its peak RSS.

    The child is reaped with ``os.wait4``, whose resource usage is that child's own (the largest RSS of it
    and of the processes it waited for), so every stage gets its own peak, unlike the running maximum of
    ``RUSAGE_CHILDREN``. Linux includes the pre-exec image (a copy of this process) in that maximum, so it
    is an upper bound that never drops below this process's RSS; :func:`own_peak_rss_mb`, read by the child
    itself, is exact. A child past ``timeout_s`` is killed with its whole process group.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if timeout_s is not None and not timed_out and time.perf_counter() - t0 > timeout_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    timed_out = True
                time.sleep(0.02)
        except BaseException:  # Ctrl-C: the child runs in its own session, so stop it here
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above: Popen must not wait again
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss_mb=_rss_mb(usage.ru_maxrss),
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out,
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # tqdm redraws with carriage returns: keep each line's last state
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text[-lines:])


# --------------------------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    """One scenario: its resolved params, work dir and (large only) the inputs to generate first."""

    name: str
    params: Params
    work: Path
    data_root: Path  # the data that embed..evaluate read and write (Layout.flat)
    ingest_root: Path  # where the measured ingest writes (Layout.flat)
    raw: dict[str, Any] | None = None  # large: generated raw Amazon files for the ingest row
    catalogue: DataParams | None = None  # large: the demo catalogue behind embed..evaluate
    prepare: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # generated inputs that failed
    note: str = ""

    def layout(self, stage: str) -> Layout:
        """Where ``stage`` reads and writes: the shared data under ``data_root``, model and reports in
        ``work``; the measured ingest writes under ``ingest_root``."""
        return layout_for(stage, self.data_root, self.ingest_root, self.work)


def layout_for(stage: str, data_root: Path, ingest_root: Path, work: Path) -> Layout:
    return Layout.flat(ingest_root) if stage == "ingest" else Layout.flat(data_root, work)


def _resolve(path: str) -> Path:
    """A params-file path the way the stages see it (relative to the project root)."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def build_scenario(name: str, args: argparse.Namespace) -> Scenario:
    """Resolve one scenario's params (with the benchmark's overrides) and work-dir layout."""
    work = (args.workdir / name).resolve()
    overrides: dict[str, Any] = {"mlflow.enabled": False, "embed.cache_dir": str(work / "cache" / "embed")}
    if args.device != "auto":
        overrides.update(
            {"embed.device": args.device, "correlate.device": args.device, "train.device": args.device}
        )
    epochs = args.epochs or (QUICK["epochs"] if args.quick else None)
    sc_args: dict[str, Any] = {"name": name, "work": work, "data_root": work, "ingest_root": work}
    if name == "demo":
        base = load_params(args.demo_params)
        if args.quick:
            overrides.update(
                {
                    "data.demo.users": QUICK["demo_users"],
                    "data.demo.items": QUICK["demo_items"],
                    "data.demo.families": QUICK["demo_families"],
                }
            )
    elif name == "beauty":
        base = load_params(args.beauty_params)
        if base.data.source == "sequences":
            missing = [
                f for f in (base.data.sequences_file, base.data.items_file) if not _resolve(f).exists()
            ]
            if missing:
                sc_args["note"] = f"skipped: {', '.join(missing)} not found ({args.beauty_params})"
    elif name == "large":
        base = load_params(args.demo_params)
        sizes = {k: getattr(args, k) for k in LARGE_DEFAULTS}  # explicit > --quick > full size
        for k, v in sizes.items():
            sizes[k] = v if v is not None else QUICK[k] if args.quick else LARGE_DEFAULTS[k]
        items, interactions, catalogue = (
            sizes["large_items"],
            sizes["large_interactions"],
            sizes["large_catalogue"],
        )
        epochs = epochs or LARGE_EPOCHS
        overrides.update(
            {
                "data.source": "amazon2014",
                "data.category": "Bench",
                "data.download": False,
                "data.raw_dir": str(work / "ingest" / "raw"),
                "data.image_column": None,  # the generated metadata has no image field
                "train.modalities": ["text"],
            }
        )
        sc_args["ingest_root"] = work / "ingest"
        sc_args["data_root"] = work / "catalogue"
        sc_args["raw"] = {
            "items": items,
            "interactions": interactions,
            "families": max(2, items // 50),
            "seed": 0,
        }
        sc_args["catalogue"] = DataParams(
            source="demo",
            kcore=base.data.kcore,
            split=base.data.split,
            demo=DemoParams(
                items=catalogue,
                users=round(USERS_PER_ITEM * catalogue),
                families=max(2, catalogue // 50),
                images=False,
            ),
        )
    else:
        raise ValueError(f"unknown scenario {name!r}")
    if epochs:
        overrides["train.epochs"] = epochs
    return Scenario(params=with_overrides(base, overrides), **sc_args)


def stage_inputs(stage: str, sc: Scenario) -> list[Path]:
    """The files a stage reads that an earlier stage (or the large scenario's generator) writes."""
    layout = sc.layout(stage)
    mods = list(sc.params.train.modalities)
    return {
        "ingest": [],
        "embed": [layout.items],
        "correlate": [layout.sequences, *(layout.embedding(m) for m in mods)],
        "train": [layout.sequences, layout.supervision_stats],
        "evaluate": [layout.sequences, layout.model_weights],
    }[stage]


# --------------------------------------------------------------------------------------------- child side
def _gpu_stats() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "gpu": torch.cuda.get_device_name(),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20,
        "gpu_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
    }


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _ingest(p: Params, layout: Layout, spec: dict[str, Any]) -> dict[str, Any]:
    stats = run_stage("ingest", p, layout)
    return {
        "count": stats["raw"]["interactions"],
        "unit": "interactions/s",
        "device": "cpu",
        "details": {k: stats[k] for k in ("users", "items", "interactions")},
    }


def _embed(p: Params, layout: Layout, spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.devices import resolve_device

    mods = list(p.train.modalities)
    device = str(resolve_device(p.embed.device))
    shutil.rmtree(p.embed.cache_dir, ignore_errors=True)  # a cold run: nothing from the vector cache
    report = run_stage("embed", p, layout)
    items = _num_rows(layout.items)
    return {
        "count": items * len(mods),
        "unit": "items/s",
        "device": device,
        "details": {"items": items, "modalities": mods, "runtime": report["runtime"]},
    }


def _correlate(p: Params, layout: Layout, spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.devices import resolve_device

    mods = list(p.train.modalities)
    device = str(resolve_device(p.correlate.device))
    stats = run_stage("correlate", p, layout)
    return {
        "count": sum(int(stats[m]["items"]) for m in mods),
        "unit": "items/s",
        "device": device,
        "details": {"modalities": mods, "items": {m: stats[m]["items"] for m in mods}},
    }


def _train(p: Params, layout: Layout, spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.devices import resolve_device

    device = str(resolve_device(p.train.device))
    shutil.rmtree(layout.checkpoints, ignore_errors=True)  # never resume: time whole epochs
    summary = run_stage("train", p, layout, progress=False)
    with open(layout.train_curve, newline="") as f:
        rates = [float(r["seq_per_s"]) for r in csv.DictReader(f)]
    epochs = int(summary["epochs_run"])
    return {
        "count": None,
        "throughput": len(rates) / sum(1 / r for r in rates),  # all epochs see the same sequences
        "unit": "seq/s",
        "device": device,
        "details": {
            "epochs_run": epochs,
            "best_epoch": summary["best_epoch"],
            "seconds_per_epoch": summary["seconds_total"] / max(1, epochs),
            "best_valid_ndcg_at_10": summary["best_valid"].get("ndcg_at_10"),
        },
    }


def _evaluate(p: Params, layout: Layout, spec: dict[str, Any]) -> dict[str, Any]:
    from pipeline.devices import resolve_device

    device = resolve_device(spec.get("eval_device"))
    report = run_stage("evaluate", p, layout, device=device, progress=False)
    return {
        "count": sum(report["cases"].values()),
        "unit": "seq/s",
        "device": str(device),
        "details": {"cases": report["cases"], "test_ndcg_at_10": report["test"].get("ndcg_at_10")},
    }


def _generate_raw(spec: dict[str, Any]) -> dict[str, Any]:
    from bench_ingest import generate  # benchmarks/ is this script's folder, so on sys.path

    r = spec["raw"]
    generate(Path(spec["dir"]), r["items"], r["interactions"], r["families"], r["seed"])
    return {}


def _build_catalogue(spec: dict[str, Any]) -> dict[str, Any]:
    params = Params(data=DataParams.model_validate(spec["data"]), mlflow=MLflowParams(enabled=False))
    stats = run_stage("ingest", params, Layout.flat(Path(spec["out"])))
    return {"details": {k: stats[k] for k in ("users", "items", "interactions")}}


STAGE_RUNNERS: dict[str, Callable[[Params, Layout, dict[str, Any]], dict[str, Any]]] = {
    "ingest": _ingest,
    "embed": _embed,
    "correlate": _correlate,
    "train": _train,
    "evaluate": _evaluate,
}
PREPARE_RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prepare_raw": _generate_raw,
    "prepare_catalogue": _build_catalogue,
}


def child_main(spec_path: Path) -> None:
    """Run one stage (or one input generator) as described by a spec JSON; write its result JSON."""
    from pipeline.errors import PipelineError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    os.environ["KDSR_MLFLOW"] = "0"
    os.chdir(ROOT)  # relative paths in params files are relative to the project root, as for the stages
    spec = read_json(spec_path)
    task = spec["task"]
    try:
        t0 = time.perf_counter()
        if task in STAGE_RUNNERS:
            roots = (Path(spec[k]) for k in ("data_root", "ingest_root", "work"))
            result = STAGE_RUNNERS[task](load_params(spec["params"]), layout_for(task, *roots), spec)
        else:
            result = PREPARE_RUNNERS[task](spec)
        result["stage_s"] = time.perf_counter() - t0
    except (PipelineError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if result.get("count") is not None and "throughput" not in result:
        result["throughput"] = result["count"] / max(result["stage_s"], 1e-9)
    result.update(_gpu_stats())
    result["peak_rss_mb"] = own_peak_rss_mb()
    write_json(spec["result"], result)


# --------------------------------------------------------------------------------------------- parent side
def run_child(
    task: str, spec: dict[str, Any], work: Path, timeout_s: float | None
) -> tuple[Measured, dict[str, Any] | None, Path]:
    """Write the spec, run this script as a child on it; return its measurement, result and log path."""
    spec_path = work / "specs" / f"{task}.json"
    result_path = work / "results" / f"{task}.json"
    result_path.unlink(missing_ok=True)
    write_json(spec_path, {**spec, "task": task, "result": str(result_path)})
    env = {**os.environ, "KDSR_MLFLOW": "0", "PYTHONUNBUFFERED": "1"}
    log_path = work / "logs" / f"{task}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    measured = measure_subprocess(cmd, log_path, env=env, timeout_s=timeout_s)
    result = read_json(result_path) if measured.returncode == 0 and result_path.exists() else None
    return measured, result, log_path


def _failure(measured: Measured, log_path: Path, timeout_s: float | None) -> str:
    if measured.timed_out:
        return f"killed after the {timeout_s:.0f} s --stage-timeout (log: {log_path})"
    tail = _log_tail(log_path, 1)
    return f"exit status {measured.returncode}: {tail} (log: {log_path})"


def prepare_inputs(sc: Scenario, stages: Sequence[str], timeout_s: float | None) -> dict[str, str]:
    """Large scenario: generate the raw files (for ingest) and the demo catalogue (for the other stages)
    that the requested stages need, unless an earlier run left them with the same sizes.

    Returns:
        ``{"raw" | "catalogue": error message}`` for the inputs that could not be generated.
    """
    jobs: dict[str, tuple[Any, Path, dict[str, Any]]] = {}
    if sc.raw is not None and "ingest" in stages:
        jobs["raw"] = (sc.raw, sc.work / "ingest", {"dir": str(sc.work / "ingest"), "raw": sc.raw})
    if sc.catalogue is not None and any(s != "ingest" for s in stages):
        data = sc.catalogue.model_dump()
        jobs["catalogue"] = (data, sc.data_root, {"data": data, "out": str(sc.data_root)})
    errors: dict[str, str] = {}
    for task, (wanted, folder, spec) in jobs.items():
        record = folder / "generated.json"
        if record.exists() and read_json(record) == wanted:
            sc.prepare[task] = {"reused": True}
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"[{sc.name}] generating the {task} input (not measured) ...", flush=True)
        measured, result, log_path = run_child(f"prepare_{task}", spec, sc.work, timeout_s)
        if result is None:
            errors[task] = f"generating the {task} input failed: {_failure(measured, log_path, timeout_s)}"
            print(f"[{sc.name}] {errors[task]}", flush=True)
            continue
        write_json(record, wanted)
        sc.prepare[task] = {
            "reused": False,
            "wall_s": measured.wall_s,
            "peak_rss_mb": result.get("peak_rss_mb", measured.peak_rss_mb),
            **result.get("details", {}),
        }
        print(f"[{sc.name}] {task} input ready in {measured.wall_s:.1f} s", flush=True)
    return errors


def run_scenario(sc: Scenario, stages: Sequence[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the requested stages of one scenario in pipeline order; one row per stage."""
    base = {"scenario": sc.name, "work": str(sc.work)}
    if sc.note:
        print(f"[{sc.name}] {sc.note}", flush=True)
        return [{**base, "stage": "(all)", "status": "skipped", "note": sc.note}]
    sc.work.mkdir(parents=True, exist_ok=True)
    (sc.work / MARKER).touch()
    params_path = sc.work / "params.yaml"
    with atomic_path(params_path) as tmp:
        tmp.write_text(yaml.safe_dump(sc.params.model_dump(), sort_keys=False))
    sc.errors = prepare_inputs(sc, stages, args.stage_timeout)
    failed: set[str] = set(sc.errors)  # stages (and generated inputs) that failed in this run
    data = "catalogue" if sc.catalogue is not None else "ingest"
    spec: dict[str, Any] = {
        "params": str(params_path),
        **{k: str(getattr(sc, k)) for k in ("data_root", "ingest_root", "work")},
    }
    if args.device != "auto":
        spec["eval_device"] = args.device
    rows: list[dict[str, Any]] = []
    for stage in stages:
        row: dict[str, Any] = {**base, "stage": stage}
        needs = [data if d == "data" else d for d in DEPENDS[stage]]
        if stage == "ingest" and sc.raw is not None:
            needs.append("raw")
        blocked = [d for d in needs if d in failed]
        missing = [p for p in stage_inputs(stage, sc) if not p.exists()]
        if blocked:
            row.update(status="skipped", note=f"needs {', '.join(blocked)}, which failed")
        elif missing:
            upstream = [s for s in STAGES[: STAGES.index(stage)] if data == "ingest" or s != "ingest"]
            row.update(
                status="failed",
                note=f"{missing[0]} is missing: run the earlier stages first "
                f"(--stages {' '.join([*upstream, stage])}) with the same --workdir",
            )
        else:
            print(f"[{sc.name}] {stage} ... (log: {sc.work / 'logs' / (stage + '.log')})", flush=True)
            measured, result, log_path = run_child(stage, spec, sc.work, args.stage_timeout)
            row.update(
                wall_s=measured.wall_s,
                peak_rss_mb=measured.peak_rss_mb,  # replaced by the child's own figure when it reports
                peak_rss_wait4_mb=measured.peak_rss_mb,
                cpu_s=measured.cpu_s,
                log=str(log_path),
            )
            if result is None:
                row.update(status="failed", note=_failure(measured, log_path, args.stage_timeout))
            else:
                row.update(status="ok", **result)
        if row["status"] == "ok":
            print(f"[{sc.name}] {stage} done: {_summary(row)}", flush=True)
        else:
            failed.add(stage)
            print(f"[{sc.name}] {stage} {row['status']}: {row['note']}", flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- reporting
def _rate(value: float | None, unit: str | None) -> str:
    if value is None:
        return ""
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:,.{digits}f} {unit or ''}".strip()


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _summary(row: dict[str, Any]) -> str:
    return (
        f"{row['wall_s']:.1f} s wall ({row['stage_s']:.1f} s in the stage), peak RSS "
        f"{row['peak_rss_mb']:,.0f} MiB, {_rate(row.get('throughput'), row.get('unit'))} on {row['device']}"
    )


TABLE_COLUMNS = (
    "scenario",
    "stage",
    "status",
    "wall s",
    "stage s",
    "peak RSS MiB",
    "CPU s",
    "throughput",
    "device",
    "GPU peak MiB",
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (notes of failed/skipped rows listed under it)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    notes = []
    for r in rows:
        device = r.get("device", "")
        if r.get("gpu"):
            device = f"{device} ({r['gpu']})"
        cells = [
            r["scenario"],
            r["stage"],
            r["status"],
            _num(r.get("wall_s")),
            _num(r.get("stage_s")),
            _num(r.get("peak_rss_mb"), 0),
            _num(r.get("cpu_s")),
            _rate(r.get("throughput"), r.get("unit")),
            device,
            _num(r.get("gpu_peak_mb"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if r.get("note"):
            notes.append(f"- {r['scenario']} / {r['stage']}: {r['note']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def default_output(now: dt.datetime) -> Path:
    """benchmarks/results/<host>-<date>.json (the folder is git-ignored)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname().split(".")[0]) or "host"
    return ROOT / "benchmarks" / "results" / f"{host}-{now:%Y%m%d-%H%M%S}.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="benchmarks/run_all.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"train.epochs for every scenario (default: the params file's; large: {LARGE_EPOCHS})",
    )
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="embed/correlate/train/evaluate device (default auto: the params files' setting)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-test sizes: demo {QUICK['demo_users']} users / {QUICK['demo_items']} items, "
        f"large {QUICK['large_items']:,} items, {QUICK['epochs']} epoch",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kdsr-bench"), help="<workdir>/<scenario>")
    ap.add_argument("--fresh", action="store_true", help="delete each scenario's work dir first")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/<host>-<date>.json)"
    )
    ap.add_argument("--demo-params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--beauty-params", type=Path, default=ROOT / "configs" / "beauty.yaml")
    for name, help_text in (
        ("large_items", "items of the large ingest"),
        ("large_interactions", "interactions of the large ingest"),
        ("large_catalogue", "items of the large embed/correlate/train/evaluate catalogue"),
    ):
        ap.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"{help_text} (default {LARGE_DEFAULTS[name]:,}; --quick: {QUICK[name]:,})",
        )
    ap.add_argument("--stage-timeout", type=float, default=None, help="kill a stage after this many seconds")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # a measured child process
    args = ap.parse_args(argv)
    for name in ("epochs", *LARGE_DEFAULTS):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when a stage failed)."""
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return 0
    now = dt.datetime.now().astimezone()
    out = (args.out or default_output(now)).resolve()
    stages = [s for s in STAGES if s in args.stages]  # always in pipeline order
    report: dict[str, Any] = {
        "host": socket.gethostname(),
        "date": now.isoformat(timespec="seconds"),
        "git_rev": git_rev(ROOT, short=True),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
        "scenarios": {},
        "rows": [],
    }
    for name in [s for s in SCENARIOS if s in args.scenarios]:
        sc = build_scenario(name, args)
        if args.fresh and sc.work.exists():
            if not (sc.work / MARKER).exists():
                raise SystemExit(
                    f"--fresh: {sc.work} was not made by this script ({MARKER} missing); not deleting it"
                )
            shutil.rmtree(sc.work)
        report["rows"].extend(run_scenario(sc, stages, args))
        report["scenarios"][name] = {
            "raw": sc.raw,
            "catalogue": sc.catalogue.demo.model_dump() if sc.catalogue else None,
            "work": str(sc.work),
            "note": sc.note,
            "prepare": sc.prepare,
            "errors": sc.errors,
            "epochs": sc.params.train.epochs,
        }
    report["load_average_after"] = list(os.getloadavg())
    table = markdown_table(report["rows"])
    write_json(out, report)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"# KDSR stage benchmark: {report['host']}, {report['date']}\n\n{table}")
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    failed = any(r["status"] == "failed" for r in report["rows"])
    return 1 if failed or any(s["errors"] for s in report["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
