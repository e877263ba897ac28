"""The data a suite shares between its runs: ingest -> embed -> correlate, built once and skipped when unchanged.

Each step records what it was built with in ``<root>/<step>.params.json`` (its params and its upstream
step's record); a step whose outputs exist and whose record matches is skipped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.experiments.plan import UNTRACKED
from pipeline.io import json_digest, read_json, write_json
from pipeline.layout import Layout
from pipeline.runner import DATA_STAGES, run_stage
from pipeline.tracking import file_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedData:
    """Where the shared artefacts of a suite live, and a digest of what they were built with."""

    root: Path
    digest: str

    @property
    def layout(self) -> Layout:
        """The shared artefacts' paths (the run outputs of this layout are unused: see :meth:`run_layout`)."""
        return Layout.flat(self.root)

    def run_layout(self, run_dir: Path) -> Layout:
        """The layout of one run: its outputs in ``run_dir``, reading the shared data."""
        return Layout.flat(self.root, run_dir)


def normalised(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists), so records compare equal across runs."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _digest(obj: Any) -> str:
    return json_digest(obj)[:16]


def read_record(path: Path) -> Any:
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
        records[step] = normalised({"step": step, "params": params, "upstream": upstream})
        upstream = _digest(records[step])
    return records


def _step_outputs(step: str, layout: Layout, modalities: Sequence[str]) -> list[Path]:
    if step == "ingest":
        return [layout.items, layout.sequences]
    if step == "embed":
        return [layout.embeddings, *(layout.embedding(m) for m in modalities)]
    return [
        layout.supervision_stats,
        *(layout.teacher(m) for m in modalities),
        *(layout.codebook(m) for m in modalities),
    ]


def shared_data(base: Params, root: Path) -> SharedData:
    """Where ``base``'s shared artefacts live under ``root`` and their digest (computes nothing)."""
    return SharedData(Path(root), _digest(_step_records(base)["correlate"]))


def prepare_shared(base: Params, root: Path) -> SharedData:
    """Run ingest -> embed -> correlate into ``root/{processed,embeddings,supervision}`` with ``base``.

    A step is skipped when its outputs exist and ``root/<step>.params.json`` equals what it would be built
    with now (its params and its upstream step's record); a rerun step makes every later step rerun.
    """
    shared = shared_data(base, root)
    records = _step_records(base)
    for step in DATA_STAGES:
        record_path = shared.root / f"{step}.params.json"
        outputs = _step_outputs(step, shared.layout, base.train.modalities)
        if all(p.exists() for p in outputs) and read_record(record_path) == records[step]:
            log.info("shared %s: up to date (%s), skipped", step, record_path)
            continue
        record_path.unlink(missing_ok=True)  # no record survives a step that fails half-way
        t0 = time.perf_counter()
        log.info("shared %s: running", step)
        run_stage(step, base, shared.layout)
        write_json(record_path, records[step])
        log.info("shared %s: done in %.1f s", step, time.perf_counter() - t0)
    return shared
