"""The process-per-stage measurement: the parent runs each stage (or input generator) as a child process
of ``benchmarks/run_all.py --child <spec.json>`` and reads its wall time, CPU time and peak RSS; the child
runs the stage function named by the spec and writes its own figures (stage seconds, throughput, peak RSS,
GPU memory) as a result JSON."""

from __future__ import annotations

import csv
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import DataParams, MLflowParams, Params, load_params
from pipeline.io import read_json, write_json
from pipeline.layout import Layout
from pipeline.runner import run_stage

ROOT = Path(__file__).resolve().parent.parent
RUN_ALL = Path(__file__).resolve().with_name("run_all.py")  # the script a child runs (``--child``)

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


# --------------------------------------------------------------------------------------------- child side
def layout_for(stage: str, data_root: Path, ingest_root: Path, work: Path) -> Layout:
    """Where ``stage`` reads and writes, from a spec's roots (here, not in scenarios.py, since the child
    rebuilds it; :meth:`benchmarks.scenarios.Scenario.layout` uses it too)."""
    return Layout.flat(ingest_root) if stage == "ingest" else Layout.flat(data_root, work)


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
    from bench_ingest import generate  # benchmarks/ is the child script's folder, so on sys.path

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
    """Write the spec, run ``run_all.py --child`` on it; return its measurement, result and log path."""
    spec_path = work / "specs" / f"{task}.json"
    result_path = work / "results" / f"{task}.json"
    result_path.unlink(missing_ok=True)
    write_json(spec_path, {**spec, "task": task, "result": str(result_path)})
    env = {**os.environ, "KDSR_MLFLOW": "0", "PYTHONUNBUFFERED": "1"}
    log_path = work / "logs" / f"{task}.log"
    cmd = [sys.executable, str(RUN_ALL), "--child", str(spec_path)]
    measured = measure_subprocess(cmd, log_path, env=env, timeout_s=timeout_s)
    result = read_json(result_path) if measured.returncode == 0 and result_path.exists() else None
    return measured, result, log_path


def _failure(measured: Measured, log_path: Path, timeout_s: float | None) -> str:
    if measured.timed_out:
        return f"killed after the {timeout_s:.0f} s --stage-timeout (log: {log_path})"
    tail = _log_tail(log_path, 1)
    return f"exit status {measured.returncode}: {tail} (log: {log_path})"
