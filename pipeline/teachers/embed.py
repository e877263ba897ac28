"""The embed stage: items.parquet -> one teacher vector per item and modality.

For each modality in ``train.modalities`` it writes ``<out_dir>/<modality>.parquet`` (``item`` int32 1..N,
``vector`` fixed_size_list<float32>[dim], ``missing`` bool; metadata: model, dim, normalize, preprocessing,
missing_policy, ...) and ``<out_dir>/report.json`` (per modality: model, device, counts of missing inputs by
kind with a few examples). Both are deterministic for given inputs and cache state: run times and cache hits
go only to the log and MLflow.

Items whose input is missing or broken (empty text, no image, unreadable file, non-image bytes, failed
download) are flagged ``missing`` and get a vector by ``embed.missing_policy``: ``zero``; ``mean`` (mean of
the usable vectors, re-normalised when ``normalize``); or ``exclude`` (the mean vector too, but the policy in
the metadata tells distillation to skip flagged items). Fewer usable items than ``embed.min_coverage`` fails
the stage with a :class:`CoverageError` naming counts per kind and example items.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import items as artifact_items
from pipeline.artifacts.vectors import write_item_vectors
from pipeline.config import EmbedParams, MLflowParams, ParamsView, section_dict
from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.io import file_digest, write_json
from pipeline.layout import embedding_file
from pipeline.teachers.encode import Items, ModalityResult, embed_image, embed_text
from pipeline.tracking import start_run

log = logging.getLogger(__name__)

MODALITIES = ("text", "image")
REPORT_NAME = "report.json"
EXAMPLES_PER_KIND = 5


class CoverageError(PipelineError):
    """Too few items have a usable input for a modality; ``report`` holds the per-kind counts."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def read_items(items_path: Path) -> Items:
    """Read ``items.parquet`` for the teachers (see :func:`pipeline.artifacts.items.read_items`)."""
    table = artifact_items.read_items(items_path)
    item = table.column("item").to_numpy().astype(np.int32)
    text = ["" if t is None else str(t) for t in table.column("text").to_pylist()]
    image = table.column("image").to_pylist() if "image" in table.column_names else None
    return Items(item, [str(i) for i in table.column("item_id").to_pylist()], text, image)


def _check_inputs(items: Items, modalities: Sequence[str], items_path: Path) -> None:
    """Fail before any work when a requested modality has no input at all."""
    for m in modalities:
        if m == "text" and not any(t.strip() for t in items.text):
            raise PipelineError(
                f"train.modalities asks for 'text' but every item's text in {items_path} is "
                "empty; drop 'text' from train.modalities or fix the item texts"
            )
        if m == "image" and (items.image is None or not any(s and s.strip() for s in items.image)):
            raise PipelineError(
                f"train.modalities asks for 'image' but no item in {items_path} has an image "
                "(the 'image' column is absent or all null); this dataset has no images: set "
                "train.modalities without 'image'"
            )


def _report_entry(res: ModalityResult, items: Items, policy: str) -> dict[str, Any]:
    """The deterministic per-modality part of report.json."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for row in sorted(res.failures):
        by_kind[res.failures[row][0]].append(row)
    n = len(items.item)
    usable = n - int(res.missing.sum())
    return {
        "model": res.teacher.name,
        "model_source": res.teacher.source,
        "device": res.teacher.device,
        "dim": res.teacher.dim,
        "normalize": res.normalize,
        "missing_policy": policy,
        "items": n,
        "usable": usable,
        "missing": n - usable,
        "coverage": usable / n,
        "missing_by_kind": {k: len(rows) for k, rows in sorted(by_kind.items())},
        "missing_examples": {
            k: [{"item_id": items.item_id[r], "detail": res.failures[r][1]} for r in rows[:EXAMPLES_PER_KIND]]
            for k, rows in sorted(by_kind.items())
        },
    }


def _coverage_message(modality: str, entry: dict[str, Any], min_coverage: float, items_path: Path) -> str:
    lines = [
        f"embed: {modality} coverage {entry['coverage']:.3f} is below embed.min_coverage {min_coverage}: only "
        f"{entry['usable']} of {entry['items']} items in {items_path} have a usable {modality} input.",
        "Missing by kind:",
    ]
    for kind, count in entry["missing_by_kind"].items():
        examples = "; ".join(f"{e['item_id']} ({e['detail']})" for e in entry["missing_examples"][kind])
        lines.append(f"  {kind}: {count} (e.g. {examples})")
    return "\n".join(lines)


def run_embed(
    embed_params: EmbedParams | ParamsView,
    modalities: list[str],
    mlflow_params: MLflowParams | ParamsView,
    items_path: Path,
    out_dir: Path,
    image_roots: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """Embed every item for each modality in play and write ``<out_dir>/<modality>.parquet`` + report.json.

    Args:
        embed_params: The ``embed`` params section (:class:`pipeline.config.EmbedParams`).
        modalities: ``train.modalities``: exactly these are computed; [] writes only an empty ``out_dir``.
        mlflow_params: The ``mlflow`` params section.
        items_path: items.parquet from the ingest stage.
        out_dir: Output folder (a DVC out).
        image_roots: Folders local image paths must resolve into (others are missing inputs of kind
            ``outside_root``); None: any path (the stage passes ``embed.image.local_root`` or
            ``data.raw_dir``, and the ingest output folder).

    Returns:
        The report written to report.json (``{"modalities": {modality: {...}}}``) plus a ``runtime`` section
        (seconds, items/s, computed vs cached counts) that is not written, because it varies between runs.

    Raises:
        PipelineError: Unknown modality, a modality without any input, ``cuda`` without a GPU, bad weights.
        CoverageError: Fewer usable items than ``embed.min_coverage`` for a modality.
        DataError: A malformed items.parquet.
    """
    items_path, out_dir = Path(items_path), Path(out_dir)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or len(set(modalities)) != len(modalities):
        raise PipelineError(
            f"train.modalities: {list(modalities)} must be distinct names from {list(MODALITIES)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # outputs are rewritten whole: no file of a modality no longer in play survives from an earlier run
    stale = [embedding_file(out_dir, m) for m in MODALITIES if m not in modalities]
    if not modalities:
        for path in [*stale, out_dir / REPORT_NAME]:
            path.unlink(missing_ok=True)
        log.info("embed: train.modalities is empty: nothing to embed, %s left empty", out_dir)
        return {"modalities": {}, "runtime": {}}

    items = read_items(items_path)
    _check_inputs(items, modalities, items_path)
    inputs = {"items": file_digest(items_path)}  # lineage: correlate checks it against the sequences
    device = str(resolve_device(embed_params.device, "embed.device"))
    cache_dir = Path(embed_params.cache_dir)
    report: dict[str, Any] = {"modalities": {}}
    runtime: dict[str, Any] = {}
    results: dict[str, ModalityResult] = {}
    with start_run("embed", mlflow_params) as tracker:
        tracker.log_params({"embed": section_dict(embed_params), "train": {"modalities": list(modalities)}})
        for m in modalities:
            t0 = time.perf_counter()
            if m == "text":
                res = embed_text(items, embed_params, device, cache_dir / "vectors")
            else:
                res = embed_image(
                    items, embed_params, device, cache_dir / "vectors", cache_dir / "images", image_roots
                )
            res.seconds = time.perf_counter() - t0 - res.load_s  # model loading is reported on its own
            entry = _report_entry(res, items, embed_params.missing_policy)
            n = len(items.item)
            runtime[m] = {
                "seconds": res.seconds,
                "load_s": res.load_s,
                "encode_s": res.encoded.encode_s,
                "items_per_s": n / max(res.seconds, 1e-9),
                "computed": res.encoded.computed,
                "cache_hits": res.encoded.cache_hits,
            }
            log.info(
                "embed %s: %d items (%d computed, %d from cache) with %s on %s in %.1f s (%.0f items/s, "
                "model load %.1f s); coverage %.3f, missing %s",
                m,
                n,
                res.encoded.computed,
                res.encoded.cache_hits,
                res.teacher.name,
                device,
                res.seconds,
                runtime[m]["items_per_s"],
                res.load_s,
                entry["coverage"],
                entry["missing_by_kind"] or "none",
            )
            tracker.set_tags({f"{m}.model": res.teacher.name, f"{m}.device": device})
            tracker.log_metrics(
                {f"{m}_{k}": v for k, v in runtime[m].items()}
                | {f"{m}_coverage": entry["coverage"], f"{m}_missing": entry["missing"]}
            )
            if entry["coverage"] < embed_params.min_coverage:
                message = _coverage_message(m, entry, embed_params.min_coverage, items_path)
                log.error("%s", message)
                raise CoverageError(message, {"modalities": {**report["modalities"], m: entry}})
            report["modalities"][m] = entry
            results[m] = res

        for m, res in results.items():
            entry = report["modalities"][m]
            metadata = {
                "modality": m,
                "model": res.teacher.name,
                "model_source": res.teacher.source,
                "model_fingerprint": res.teacher.fingerprint,
                "dim": res.teacher.dim,
                "normalize": entry["normalize"],
                "preprocessing": res.teacher.preprocessing,
                "missing_policy": embed_params.missing_policy,
                "items": entry["items"],
                "missing": entry["missing"],
                "inputs": inputs,
            }
            write_item_vectors(embedding_file(out_dir, m), res.vectors, res.missing, metadata)
        write_json(out_dir / REPORT_NAME, report)
        for path in stale:
            path.unlink(missing_ok=True)
        tracker.log_dict(report, "embed_report.json")
    return {**report, "runtime": runtime}
