"""The ingest stage: raw review/metadata files (or the demo generator) -> items.parquet + sequences.parquet.

Modules: ``demo`` (deterministic synthetic Amazon-2014-format data), ``formats`` (parsers of the raw
formats), ``download`` (resumable, checksummed fetching of official files), ``kcore`` (iterative k-core),
``splits`` (leave-one-out / ratio boundaries) and ``ingest`` (the stage body, :func:`run_ingest`).
"""
