"""Frozen teacher encoders: one vector per item and modality, cached by content hash.

- :mod:`pipeline.teachers.text` -- sentence-transformers text teacher (packaged all-MiniLM-L6-v2 by default)
- :mod:`pipeline.teachers.image` -- timm image teacher (packaged EfficientNet-Lite0 ImageNet weights)
- :mod:`pipeline.teachers.fetch` -- image sources (local paths, file/http(s) URLs) into a content-addressed cache
- :mod:`pipeline.teachers.cache` -- content hash -> exact float32 vector store that makes reruns incremental
- :mod:`pipeline.teachers.embed` -- the embed stage: :func:`~pipeline.teachers.embed.run_embed`

Heavy libraries (sentence_transformers, timm) are imported lazily inside the functions that need them.
"""
