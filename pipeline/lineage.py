"""Lineage: the digests of the inputs an artefact was built from, and the check that they are still on disk.

Each stage output records the SHA-256 of the inputs it was built from, and the next stage compares them
with the files it is about to use, so a stale artefact fails loudly instead of giving a silent wrong
result (a model evaluated on other data of the same size, teacher vectors attached to other items):

| artefact | records (under ``inputs``) | checked by |
|---|---|---|
| ``data/processed/sequences.parquet`` metadata | ``items_sha256``: the items table written with it | correlate (vs the embeddings) |
| ``data/embeddings/<m>.parquet`` metadata | ``items``: the items.parquet it embedded | correlate |
| ``data/supervision/stats.json`` | ``sequences``, ``items``, ``embeddings/<m>``; under ``files``: each file of the folder | train (sequences, the files of its modalities) |
| ``models/config.json`` | ``sequences``, ``catalogue``, ``supervision/teacher_<m>`` | evaluate (sequences), recommend and the MLflow model (sequences, catalogue) |

An artefact written before lineage was recorded has no ``inputs``: it is used with a warning (rebuild it to
get the check). Only :mod:`pipeline.io` is imported, so this runs on the bare GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import file_digest, parquet_metadata
from pipeline.layout import (
    ITEMS,
    MODEL_CONFIG,
    SEQUENCES,
    SUPERVISION_STATS,
    codebook_file,
    neighbours_file,
    teacher_file,
)

log = logging.getLogger(__name__)

INPUTS_KEY = "inputs"  # where an artefact keeps its input digests (JSON key / Parquet metadata key)
ITEMS_KEY = "items_sha256"  # sequences.parquet metadata: digest of the items.parquet written with it
# models/config.json inputs: digest of the item-id map (original ids in dense order)
CATALOGUE_KEY = "catalogue"
FILES_KEY = "files"  # supervision stats.json: {file name: sha256} of every file the correlate stage wrote


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


def supervision_files(supervision_dir: str | Path) -> dict[str, str]:
    """What the correlate stage records under ``files`` in ``stats.json``: the digest of every file it wrote
    beside it, so a file swapped in from another run (same items, same size) is noticed by train."""
    folder = Path(supervision_dir)
    return {
        p.name: file_digest(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SUPERVISION_STATS
    }


def check_supervision_files(supervision_dir: str | Path, modalities: Iterable[str]) -> None:
    """Train: the supervision files of ``modalities`` must be the ones the correlate stage wrote with
    ``stats.json`` (teacher vectors, codebook, neighbour lists; a file not on disk is left to its reader).

    A folder written before the digests were recorded is used with a warning naming the rerun.

    Raises:
        LineageError: naming each replaced file, both digests and the correlate stage.
    """
    modalities = list(modalities)
    if not modalities:
        return
    folder = Path(supervision_dir)
    stats = folder / SUPERVISION_STATS
    try:
        recorded = json.loads(stats.read_text()).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        recorded = None
    hint = f"{folder} (run the correlate stage: dvc repro -f correlate)"
    if not isinstance(recorded, dict) or not recorded:
        log.warning(
            "%s records no digests of the supervision files (written by an older version): a file replaced "
            "since is not noticed; rebuild %s",
            stats,
            hint,
        )
        return
    files = [f(folder, m) for m in modalities for f in (teacher_file, codebook_file, neighbours_file)]
    actual = {p.name: file_digest(p) for p in files if p.exists()}
    missing = [p.name for p in files if p.name not in recorded and p.exists()]
    if missing:
        raise LineageError(
            f"{', '.join(missing)} in {folder} not written by the correlate stage that wrote {stats}: "
            f"rebuild {hint}"
        )
    check_lineage(recorded, actual, hint, artefact=str(stats), paths={p.name: p for p in files})


# --------------------------------------------------------------------------------------------- model
def catalogue_digest(item_ids: Sequence[str]) -> str:
    """SHA-256 of an item-id map: the original ids in dense-id order (item 1 first), as a JSON list.

    The same map gives the same digest whether it is read from ``items.parquet`` or from the ``items.json``
    shipped inside the MLflow model; item text or images do not enter it."""
    return hashlib.sha256(json.dumps([str(x) for x in item_ids]).encode()).hexdigest()


def items_catalogue_digest(items_path: str | Path) -> str:
    """:func:`catalogue_digest` of ``items.parquet`` (its ``item_id`` column, checked dense 1..N)."""
    return catalogue_digest(_item_ids(Path(items_path)))


def model_inputs(
    sequences_path: str | Path, supervision_dir: str | Path, modalities: Iterable[str]
) -> dict[str, str]:
    """What the train stage records under ``inputs`` in ``models/config.json``: the sequences' digest, the
    item-id map's (from the ``items.parquet`` next to the sequences, when there is one) and each teacher's."""
    out = {"sequences": file_digest(sequences_path)}
    items = Path(sequences_path).with_name(ITEMS)
    if items.exists():
        out[CATALOGUE_KEY] = items_catalogue_digest(items)
    for m in modalities:
        out[f"supervision/teacher_{m}"] = file_digest(teacher_file(supervision_dir, m))
    return out


def read_model_inputs(model_dir: str | Path) -> dict[str, str] | None:
    """The ``inputs`` recorded in ``<model_dir>/config.json`` (None when absent or unreadable)."""
    try:
        recorded = json.loads((Path(model_dir) / MODEL_CONFIG).read_text()).get(INPUTS_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def check_model(model_dir: str | Path, sequences_path: str | Path) -> None:
    """Evaluate: the model must have been trained on the sequences about to be evaluated.

    Raises:
        LineageError: the sequences changed since training (rerun the train stage).
    """
    check_lineage(
        read_model_inputs(model_dir),
        {"sequences": file_digest(sequences_path)},
        f"{model_dir} (run the train stage: dvc repro train)",
        artefact=str(Path(model_dir) / MODEL_CONFIG),
        paths={"sequences": sequences_path},
    )


def check_catalogue(model_dir: str | Path, item_ids: Sequence[str], where: str | Path) -> None:
    """The item-id map ``item_ids`` (read from ``where``) must be the one the model was trained with: a
    model's dense ids mean other items in another catalogue.

    Raises:
        LineageError: naming ``where``, both digests and the train stage.
    """
    check_lineage(
        read_model_inputs(model_dir),
        {CATALOGUE_KEY: catalogue_digest(item_ids)},
        f"{model_dir} (run the train stage: dvc repro train)",
        artefact=str(Path(model_dir) / MODEL_CONFIG),
        paths={CATALOGUE_KEY: f"the item ids of {where}"},
    )


def check_recommender(
    model_dir: str | Path, items_path: str | Path, sequences_path: str | Path | None = None
) -> None:
    """Recommend (stage and ``--items``): the model must have been trained on this catalogue and, when
    ``sequences_path`` is given (the stage, which recommends for its users), on these sequences.

    A model recorded before the catalogue digest existed is checked through the sequences instead: its
    recorded sequences digest against ``sequences.parquet`` next to ``items_path``, and the items digest the
    sequences carry against ``items_path``.

    Raises:
        LineageError: the model, the items or the sequences come from different data.
    """
    items_path = Path(items_path)
    recorded = read_model_inputs(model_dir) or {}
    if CATALOGUE_KEY in recorded:
        check_catalogue(model_dir, _item_ids(items_path), items_path)
        if sequences_path is not None:
            check_model(model_dir, sequences_path)
        return
    seqs = Path(sequences_path) if sequences_path is not None else items_path.with_name(SEQUENCES)
    if not seqs.exists():
        log.warning("%s records no catalogue digest and %s is missing: lineage not checked; rebuild %s",
                    Path(model_dir) / MODEL_CONFIG, seqs, model_dir)  # fmt: skip
        return
    check_model(model_dir, seqs)
    check_items_of_sequences(items_path, seqs)


def check_items_of_sequences(items_path: str | Path, sequences_path: str | Path) -> None:
    """``items_path`` must be the items.parquet written with ``sequences_path`` (when the sequences record
    its digest; older ones do not, and pass).

    Raises:
        LineageError: the two come from different ingest runs.
    """
    items_digest = parquet_metadata(sequences_path).get(ITEMS_KEY)
    if items_digest:
        check_lineage(
            {"items": items_digest},
            {"items": file_digest(items_path)},
            "data/processed (run the ingest stage: dvc repro ingest)",
            artefact=f"{sequences_path} (written with another items.parquet)",
            paths={"items": items_path},
        )


def _item_ids(items_path: Path) -> list[str]:
    from pipeline.artifacts.items import read_items

    return [str(x) for x in read_items(items_path, ["item_id"]).column("item_id").to_pylist()]
