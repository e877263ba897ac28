"""Typed readers and writers of the pipeline's artefacts: one module per file format, validating it once.

- :mod:`~pipeline.artifacts.sequences`: ``sequences.parquet`` as a CSR :class:`Sequences` record;
- :mod:`~pipeline.artifacts.items`: ``items.parquet``, and the ``item`` 1..N check every per-item file shares;
- :mod:`~pipeline.artifacts.vectors`: per-item vector files (the embed stage's ``<m>.parquet`` and the
  correlate stage's ``teacher_<m>.parquet``) as :class:`ItemVectors`;
- :mod:`~pipeline.artifacts.neighbours`: the correlate stage's ``topk_<m>.parquet``.

The correlation codebooks are read and written by their own classes (:mod:`pipeline.supervision.codebooks`),
the trained model by :mod:`pipeline.models.persist`. Where each file lives is :mod:`pipeline.layout`'s job.
"""

from pipeline.artifacts.items import check_dense_ids, read_items
from pipeline.artifacts.neighbours import read_neighbours, write_neighbours
from pipeline.artifacts.sequences import Sequences, check_sequences, read_sequences
from pipeline.artifacts.vectors import ItemVectors, read_item_vectors, write_item_vectors

__all__ = [
    "ItemVectors",
    "Sequences",
    "check_dense_ids",
    "check_sequences",
    "read_item_vectors",
    "read_items",
    "read_neighbours",
    "read_sequences",
    "write_item_vectors",
    "write_neighbours",
]
