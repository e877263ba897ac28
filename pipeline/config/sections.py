"""The sections of params.yaml: one frozen pydantic model per section, unknown keys forbidden.

The schema is the one source of every key, its default, its bounds and its description: the shipped
params.yaml and the README's parameter table are written from it (``python -m stages.schema --write``). The
sections live in :mod:`~pipeline.config.inputs` (data, embed, correlate), :mod:`~pipeline.config.train` and
here (eval, recommend, mlflow and the whole file).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.base import MAX_SEED, BoolAsNumber, ConfigError, Modality, Section
from pipeline.config.inputs import (
    CorrelateParams,
    DataParams,
    DemoParams,
    EmbedParams,
    ImageTeacherParams,
    TextTeacherParams,
)
from pipeline.config.train import AsyncLRParams, BSARecParams, KDParams, TrainParams

__all__ = [
    "MAX_SEED",
    "AsyncLRParams",
    "BSARecParams",
    "BoolAsNumber",
    "ConfigError",
    "CorrelateParams",
    "DataParams",
    "DemoParams",
    "EmbedParams",
    "EvalParams",
    "ImageTeacherParams",
    "KDParams",
    "MLflowParams",
    "Modality",
    "Params",
    "RecommendParams",
    "TextTeacherParams",
    "TrainParams",
]


# --------------------------------------------------------------------------------------------- eval
class EvalParams(Section):
    ks: list[int] = Field(
        default_factory=lambda: [5, 10, 20, 50],
        description="cut-offs of HR/NDCG/MRR (@50: what papers on the RecBole protocol report)",
    )
    mask_history: bool = Field(
        True,
        description="leave the items of the user's history out of the ranking (false: RecBole's protocol, "
        "the user's own past items stay in it)",
    )
    batch_size: int = Field(
        1024,
        ge=1,
        le=10_000_000,
        description="cases scored at once (memory: a few batch_size x catalogue score blocks)",
    )
    max_users: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="rank only a fixed sample of this many users (null: every user), for user bases and "
        "catalogues too big to rank everyone: the same users in every run and in validation and test; the "
        "metrics are then estimates, and metrics.json says how many users were ranked (users_ranked)",
    )
    sample_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of the eval.max_users sample (the same seed: the same users)"
    )

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"ks must be a non-empty list of positive integers, got {v}")
        return sorted(set(v))


# --------------------------------------------------------------------------------------------- recommend
class RecommendParams(Section):
    k: int = Field(10, ge=1, le=1_000_000, description="items recommended per user")
    mask_history: bool = Field(
        True, description="never recommend an item the user already has (validation/test items included)"
    )
    batch_size: int = Field(
        1024, ge=1, le=10_000_000, description="users scored at once (memory: batch_size x catalogue floats)"
    )
    index: Literal["auto", "exact", "flat", "hnsw", "ivf", "pq"] = Field(
        "auto",
        description="top-K retrieval: exact (every item scored, torch) | flat (faiss IndexFlatIP, exact) | "
        "hnsw (faiss HNSW, approximate) | ivf (faiss IndexIVFFlat: k-means cells, approximate; builds far "
        "faster than hnsw on millions of items) | pq (faiss IndexPQFastScan: every item scanned as a 4-bit "
        "code, the best pq_rerank re-scored exactly; approximate, but no item out of reach, so it holds its "
        "recall on vectors without cluster structure) | auto (exact below 50,000 items, else flat); for "
        "hnsw, ivf and pq check the recall@k in the stage's output",
    )
    hnsw_m: int = Field(32, ge=2, le=512, description="hnsw: links per node of the graph")
    hnsw_ef_search: int = Field(
        128,
        ge=1,
        le=100_000,
        description="hnsw: candidates explored per query (higher: better recall, slower)",
    )
    hnsw_ef_construction: int = Field(
        40, ge=1, le=100_000, description="hnsw: candidates explored while building"
    )
    ivf_nlist: int | None = Field(
        None, ge=1, le=100_000_000, description="ivf: k-means cells (null: the square root of the items)"
    )
    ivf_nprobe: int = Field(
        32, ge=1, le=100_000_000, description="ivf: cells scanned per query (higher: better recall, slower)"
    )
    pq_m: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="pq: sub-quantizers, each coding width / pq_m dimensions in 4 bits (must divide the "
        "width; more: finer codes, a longer scan; null: width / 2)",
    )
    pq_rerank: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="pq: candidates of the code scan re-scored with the full vectors per query (higher: "
        "better recall, slower)",
    )
    recall_users: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="hnsw, ivf, pq: users (a fixed seeded sample) whose top-K is also ranked exactly, for recall@k",
    )


class MLflowParams(Section):
    enabled: bool = Field(True, description="track runs in MLflow (KDSR_MLFLOW=0 turns it off too)")
    tracking_uri: str | None = Field(None, description="null: sqlite:///<project root>/mlflow.db")
    experiment: str = Field("kdsr", description="the MLflow experiment of the runs")
    register_as: str | None = Field(
        "kdsr",
        description="train: register the logged pyfunc model under this name (Beauty: kdsr-beauty; "
        "null: log it, do not register)",
    )

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


class Params(Section):
    data: DataParams = Field(default_factory=DataParams, description="the ingest stage")
    embed: EmbedParams = Field(
        default_factory=EmbedParams, description="the embed stage: one teacher vector per item and modality"
    )
    correlate: CorrelateParams = Field(
        default_factory=CorrelateParams,
        description="the correlate stage: reduction, holistic neighbours, the dissected-correlation codebook",
    )
    train: TrainParams = Field(default_factory=TrainParams, description="the train stage: the student")
    eval: EvalParams = Field(default_factory=EvalParams, description="the evaluate stage: full ranking")
    recommend: RecommendParams = Field(
        default_factory=RecommendParams, description="the recommend stage: data/recommendations.parquet"
    )
    mlflow: MLflowParams = Field(default_factory=MLflowParams, description="tracking, for every stage")
