"""Readers of the raw data sources, each returning plain polars frames (:mod:`pipeline.data.records`).

Modules: ``amazon`` (where each Amazon release keeps its files, finding or downloading them, and loading one
release), ``reviews`` (the review files: JSON lines and the 2014 ratings CSV), ``metadata`` (the Amazon
metadata files), ``sequences`` (``user item1 item2 ...`` lines plus an item table) and ``demo`` (the
deterministic synthetic data in the Amazon 2014 formats).
"""
