"""Lineage: the digests of the inputs an artefact was built from, and the check that they are still on disk.

Each stage output records the SHA-256 of the inputs it was built from, and the next stage compares them
with the files it is about to use, so a stale artefact fails loudly instead of giving a silent wrong
result (a model evaluated on other data of the same size, teacher vectors attached to other items):

| artefact | records (under ``inputs``) | checked by |
|---|---|---|
| ``data/processed/sequences.parquet`` metadata | ``items_sha256``: the items table written with it | correlate (vs the embeddings) |
| ``data/embeddings/<m>.parquet`` metadata | ``items``: the items.parquet it embedded | correlate |
| ``data/supervision/stats.json`` | ``sequences``, ``items``, ``embeddings/<m>`` | train (sequences) |
| ``models/config.json`` | ``sequences``, ``supervision/teacher_<m>`` | evaluate (sequences) |

An artefact written before lineage was recorded has no ``inputs``: it is used with a warning (rebuild it to
get the check). Only :mod:`pipeline.io` is imported, so this runs on the bare GPU machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import file_digest, parquet_metadata
from pipeline.layout import MODEL_CONFIG, SUPERVISION_STATS, teacher_file

log = logging.getLogger(__name__)

INPUTS_KEY = "inputs"  # where an artefact keeps its input digests (JSON key / Parquet metadata key)
ITEMS_KEY = "items_sha256"  # sequences.parquet metadata: digest of the items.parquet written with it


class LineageError(PipelineError):
    """An artefact was built from other inputs than the files now on disk."""


def check_lineage(
    recorded: Mapping[str, Any] | None,
    actual: Mapping[str, str],
    rebuild_hint: str,
    *,
    artefact: str = "",
    paths: Mapping[str, str | Path] | None = None,
) -> None:
    """Compare recorded input digests with the current ones; raise when one differs.

    Args:
        recorded: ``{input name: sha256}`` as the artefact recorded it (None or empty: nothing recorded,
            a warning is logged and nothing is checked).
        actual: ``{input name: sha256}`` of the files now on disk; names absent from ``recorded`` are not
            checked (and vice versa).
        rebuild_hint: what to rebuild, e.g. ``"data/supervision (run the correlate stage)"``.
        artefact: the artefact whose record this is (named in the message).
        paths: ``{input name: path}``, to name each input's file in the message.

    Raises:
        LineageError: naming, per differing input, its file, both digests and what to rebuild.
    """
    what = artefact or "the artefact"
    if not recorded:
        log.warning(
            "%s records no input digests (built by an older version?): lineage not checked; rebuild %s",
            what,
            rebuild_hint,
        )
        return
    paths = paths or {}
    problems = []
    for name, digest in actual.items():
        want = recorded.get(name)
        if want is not None and want != digest:
            where = f" ({paths[name]})" if name in paths else ""
            problems.append(f"{name}{where}: sha256 {digest} now, but {what} was built from sha256 {want}")
    if problems:
        raise LineageError(
            f"{what} was built from other inputs than the ones on disk: "
            + "; ".join(problems)
            + f". Rebuild {rebuild_hint} (or `dvc repro`)."
        )


# --------------------------------------------------------------------------------------------- supervision
def supervision_inputs(sequences_path: str | Path, embeddings: Mapping[str, str | Path]) -> dict[str, str]:
    """What the correlate stage records in ``stats.json``: the sequences' and each embeddings file's
    digest, plus the items digest the sequences carry (when they do). Absent sequences (nothing to
    correlate: ``train.modalities`` empty) are left out."""
    out: dict[str, str] = {}
    if Path(sequences_path).exists():
        out["sequences"] = file_digest(sequences_path)
        items = parquet_metadata(sequences_path).get(ITEMS_KEY)
        if items:
            out["items"] = items
    out.update({f"embeddings/{m}": file_digest(path) for m, path in embeddings.items()})
    return out


def check_embeddings_match_sequences(embeddings_path: str | Path, sequences_path: str | Path) -> None:
    """Correlate: the embeddings must come from the items.parquet the sequences were written with.

    Raises:
        LineageError: they come from another items table (rerun the embed stage).
    """
    recorded = parquet_metadata(embeddings_path).get(INPUTS_KEY) or {}
    items = parquet_metadata(sequences_path).get(ITEMS_KEY)
    if not items or not recorded.get("items"):
        log.warning("%s or %s records no items digest: lineage not checked", embeddings_path, sequences_path)
        return
    check_lineage(
        {"items": recorded["items"]},
        {"items": items},
        f"{embeddings_path} (run the embed stage: dvc repro embed)",
        artefact=str(embeddings_path),
        paths={"items": f"the items.parquet written with {sequences_path}"},
    )


def read_supervision_inputs(supervision_dir: str | Path) -> dict[str, str] | None:
    """The ``inputs`` recorded in ``<supervision_dir>/stats.json`` (None when absent or unreadable)."""
    path = Path(supervision_dir) / SUPERVISION_STATS
    try:
        return json.loads(path.read_text()).get(INPUTS_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def check_supervision(
    supervision_dir: str | Path, sequences_path: str | Path, modalities: Iterable[str]
) -> None:
    """Train: the supervision must have been built from the sequences about to be trained on.

    Nothing is checked when ``modalities`` is empty (an ID-only model reads no supervision).

    Raises:
        LineageError: stale supervision (rerun the correlate stage).
    """
    if not list(modalities):
        return
    check_lineage(
        read_supervision_inputs(supervision_dir),
        {"sequences": file_digest(sequences_path)},
        f"{supervision_dir} (run the correlate stage: dvc repro correlate)",
        artefact=str(Path(supervision_dir) / SUPERVISION_STATS),
        paths={"sequences": sequences_path},
    )


# --------------------------------------------------------------------------------------------- model
def model_inputs(
    sequences_path: str | Path, supervision_dir: str | Path, modalities: Iterable[str]
) -> dict[str, str]:
    """What the train stage records under ``inputs`` in ``models/config.json``."""
    out = {"sequences": file_digest(sequences_path)}
    for m in modalities:
        out[f"supervision/teacher_{m}"] = file_digest(teacher_file(supervision_dir, m))
    return out


def check_model(model_dir: str | Path, sequences_path: str | Path) -> None:
    """Evaluate: the model must have been trained on the sequences about to be evaluated.

    Raises:
        LineageError: the sequences changed since training (rerun the train stage).
    """
    config = Path(model_dir) / MODEL_CONFIG
    try:
        recorded = json.loads(config.read_text()).get(INPUTS_KEY)
    except (OSError, ValueError, AttributeError):
        recorded = None
    check_lineage(
        recorded,
        {"sequences": file_digest(sequences_path)},
        f"{model_dir} (run the train stage: dvc repro train)",
        artefact=str(config),
        paths={"sequences": sequences_path},
    )
