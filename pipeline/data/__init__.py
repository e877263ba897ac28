"""The ingest stage: raw review/metadata files (or the demo generator) -> items.parquet + sequences.parquet.

Modules: ``sources`` (readers of the raw formats: Amazon releases, ``sequences`` files, the deterministic
demo generator), ``records`` (what every reader returns and reports: schemas, per-file record counts,
field checks), ``text`` (item text and image references from metadata values), ``download`` (resumable,
checksummed fetching of official files), ``kcore`` (iterative k-core), ``splits`` (leave-one-out / ratio
boundaries) and ``ingest`` (the stage body, :func:`run_ingest`).
"""
