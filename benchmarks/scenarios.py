"""The benchmark scenarios (demo, beauty, large): their params and work dirs, the inputs each stage reads,
the large scenario's generated inputs, and one scenario's run, stage by stage, in child processes."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness import ROOT, _failure, layout_for, run_child
from benchmarks.report import _summary
from pipeline.config import DataParams, DemoParams, Params, load_params, with_overrides
from pipeline.io import atomic_path, read_json, write_json
from pipeline.layout import Layout

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

    def summary(self) -> dict[str, Any]:
        """The report's entry for this scenario (its sizes, work dir, generated inputs and epochs)."""
        return {
            "raw": self.raw,
            "catalogue": self.catalogue.demo.model_dump() if self.catalogue else None,
            "work": str(self.work),
            "note": self.note,
            "prepare": self.prepare,
            "errors": self.errors,
            "epochs": self.params.train.epochs,
        }


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
