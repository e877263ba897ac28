"""The ``train`` params section, and the option names of the student's settings.

Each option type below is the one list of that setting's names: the student's registries
(``pipeline.models.student``: ``FUSIONS``, ``BACKBONES``, ``OUTPUTS``, ``KD_PROJECTIONS``, ``SCORINGS``) are
built from them or checked against them (tests/test_option_names.py), so a name cannot be valid in params.yaml
and unknown to the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import MAX_SEED, Device, Modality, Precision, Section

Backbone = Literal["sasrec", "gru4rec", "bsarec", "session_graph"]
Fusion = Literal["sum", "gate", "concat", "paper_gate"]
Output = Literal["fused", "id", "id_teacher"]
Scoring = Literal["dot", "cos"]
KDProjection = Literal["identity", "random", "none", "item"]
AsyncSchedule = Literal["linear", "exponential", "step", "constant", "none"]


class KDParams(Section):
    holistic_weight: float = Field(0.5, ge=0.0, description="weight of the holistic correlation loss")
    code_weight: float = Field(0.5, ge=0.0, description="weight of the dissected-code cross-entropy")
    tau: float = Field(1.5, gt=0.0, description="temperature of the distilled scores")
    max_pairs: int = Field(
        4096,
        ge=1,
        le=100_000_000,
        description="within-sequence pairs per batch per modality, the paper's (sampled when more; unique "
        "per batch for mse, per sequence for frobenius)",
    )
    neighbour_pairs: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="plus this many pairs per batch per modality of a batch item with one of its "
        "correlate.topk teacher neighbours (mse only; 0: none)",
    )
    random_pairs: int = Field(
        8,
        ge=0,
        le=1_000_000,
        description="plus, per sequence, this many pairs of one of its items with an item drawn uniformly "
        "from the whole catalogue (within-sequence pairs reach only the batch's rows; the full softmax of a "
        "tied model moves every row)",
    )
    holistic_loss: Literal["mse", "frobenius"] = Field(
        "frobenius",
        description="mse: mean squared residual over the batch's unique pairs (its gradient fades, ~1e-4 "
        "of the CE's on the table) | frobenius: the authors' per-sequence non-squared Frobenius norm of "
        "the residual matrix |s/tau - r/tau| (+1e-8 inside the root), averaged over the batch's sequences",
    )
    projection: KDProjection = Field(
        "item",
        description="P in xi(P m_i, P m_j): identity (an identity-initialised linear map: starts at loss 0 "
        "and can absorb the drift) | random (the authors' two random linear layers) | none (distil on the "
        "table itself) | item (on the items' output embeddings, the rows that score the catalogue)",
    )

    @model_validator(mode="after")
    def _check(self) -> KDParams:
        if self.holistic_loss == "frobenius" and self.neighbour_pairs > 0:
            raise ValueError(
                "neighbour_pairs must be 0 with holistic_loss: frobenius (its norm is per sequence, and "
                "neighbour pairs belong to no sequence)"
            )
        return self


class AsyncLRParams(Section):
    schedule: AsyncSchedule = Field(
        "linear",
        description="the modality tables' LR from start_scale x base up to base: linear | exponential "
        "(the same factor each epoch) | step (x gamma at each of step_epochs) | constant (start_scale "
        "throughout) | none (the base rate)",
    )
    start_scale: float = Field(
        0.25, gt=0.0, le=1.0, description="linear/step/exponential: initial fraction; constant: the fraction"
    )
    warmup_epochs: int = Field(
        10, ge=1, le=1_000_000, description="linear/exponential: epochs to reach the base rate"
    )
    step_epochs: list[int] = Field(
        default_factory=lambda: [5, 10], description="step: epochs where the scale is multiplied by gamma"
    )
    gamma: float = Field(2.0, gt=0.0, description="step: the factor")


class BSARecParams(Section):
    """The ``bsarec`` backbone: each layer mixes ``alpha`` x the frequency rescaler with (1 - alpha) x attention."""

    alpha: float = Field(
        0.7, ge=0.0, le=1.0, description="share of the frequency rescaler (1 - alpha: self-attention)"
    )
    window: int = Field(
        0, ge=0, le=10_000, description="the causal low-pass part: mean of the last window items (0: all)"
    )


class SessionGraphParams(Section):
    """The ``session_graph`` backbone: the KDSR authors' student (pipeline/models/session_graph.py)."""

    last_n: int = Field(
        2,
        ge=1,
        le=100_000,
        description="a position's hidden state sums the fused node vectors of its last last_n positions "
        "(the authors': 2)",
    )
    attention_dropout: float = Field(
        0.2, ge=0.0, lt=1.0, description="dropout of the graph attention weights (the authors': 0.2)"
    )


class RefreshParams(Section):
    """What the model learns after the choices on validation: each user's validation step (``train.refresh``)."""

    enabled: bool = Field(
        False,
        description="after the choices on validation, the model learns every user's validation step: the "
        "transition table is rebuilt over it and the network trains train.refresh.epochs more epochs over "
        "windows that end at it; validation metrics come from the network as chosen (selected.safetensors)",
    )
    epochs: int = Field(4, ge=0, le=1_000, description="the extra epochs (0: the transition table only)")
    lr_scale: float = Field(0.5, gt=0.0, le=10.0, description="their peak rate x train.lr, cosine to 0")
    update: Literal["items", "all"] = Field(
        "items",
        description="the weights those epochs update: the item side only (the ID, modality and attribute tables, "
        "their projections), the sequence encoder kept as chosen; or all (the no-KD twin then gains more)",
    )


class TrainParams(Section):
    backbone: Backbone = Field(
        "sasrec",
        description="bsarec: BSARec (AAAI 2024), each layer mixes train.bsarec.alpha x a frequency "
        "rescaler with (1 - alpha) x self-attention, made causal: the low-pass part at a position is the "
        "mean of the items up to it (train.bsarec.window: of the last that many), the high-pass part the "
        "item minus that mean, re-weighted by a learned beta^2 per dimension; then a 4x-wide feed-forward | "
        "session_graph: the KDSR authors' student, one relation-aware graph attention layer over the ID "
        "embeddings on the session graph of each prefix (self, out, in, both edges), the fusion gate over "
        "[ID, graph, modalities] per item, the sum of the last train.session_graph.last_n positions "
        "(train.dropout: on each fused item, the authors' 0.4; train.layers and heads unused)",
    )
    modalities: list[Modality] = Field(
        default_factory=lambda: ["text", "image"], description="[] is the ID-only SASRec baseline"
    )
    fusion: Fusion = Field(
        "sum",
        description="sum | gate | concat (each table through LayerNorm -> Linear(d, H): the table's scale, "
        "hence its learning rate, is invisible to the forward pass) | paper_gate (the paper's: a bias-free "
        "Linear(d, H), no normalisation; a shared MLP Linear(H, H) -> ReLU -> Linear(H, 1) scores each part, "
        "softmax over the parts, weighted sum)",
    )
    output: Output = Field(
        "fused",
        description="what scores the catalogue: fused (tied: the fused ID + modality representation is "
        "both input and output embedding) | id (the paper's: the ID embeddings; modality tables feed the "
        "input only) | id_teacher (the ID embeddings + a learned map of the frozen teacher vectors)",
    )
    scoring: Scoring = Field(
        "dot",
        description="an item's logit: dot (hidden state . output embedding) | cos (their cosine / "
        "temperature), in training, validation, evaluation and serving alike",
    )
    temperature: float = Field(0.1, gt=0.0, description="scoring cos only")
    last_item_prior: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
        description="after training, add w x std(the user's logits) x cos(m_last, m_j) to every logit, with "
        "m the student's own modality tables (distilled toward the teacher's correlations; the mean over "
        "the modalities) and m_last the input's last item's unit table row, or with train.prior_decay > 0 "
        "the decayed mean of its recent items' rows: the short-term interest of STAMP/SR-GNN in the "
        "distilled geometry (variants and near-duplicates of the items just seen). w is "
        "chosen from this list on validation NDCG@10 (include 0 to allow none) and saved with the model; "
        "[] = off. Training and its epoch selection never see it",
    )
    prior_in_training: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="the last-item prior's cosine term in the training logits too, at this fixed scale a: every "
        "logit, in training and wherever the model scores, gains a x cos(m_last, m_j) (m_last as for "
        "last_item_prior, mixed over the items up to each training position), so the network learns what the "
        "cosine to the recent items does not already say; the post-hoc weight is chosen on top of it. 0 = off. "
        "Costs one more product of the modality tables' width per training step",
    )
    transition_prior: list[float] = Field(
        default_factory=list,
        description="after training (and the last-item prior's choice), add w x std(the user's scores) x the "
        "recency-weighted rows of the training sequences' transition table T[i, j] = c(i -> j) / "
        "sqrt(c(i ->) c(-> j)) for the input's recent items: the first-order Markov part of FPMC. w is chosen "
        "from this list on validation NDCG@10 after the last-item prior's and the table saved with the model "
        "(evaluate, recommend and the served model rank with it; through an index, the index's top-K united "
        "with the transition candidates is re-scored); [] = off. +3 % validation NDCG@10 on Beauty and "
        "Scientific, 3 seeds (docs/RESULTS.md)",
    )
    transition_window: int = Field(
        1,
        ge=1,
        le=10_000,
        description="the transition prior's table also counts the steps i -> j that are d = 2..this many "
        "positions apart in a training sequence, each weighted transition_decay^(d - 1): what a user buys a few "
        "items after i, not only next; 1: the next item only (FPMC's first order)",
    )
    transition_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="the weight of a step d positions apart is this^(d - 1)"
    )
    prior_decay: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="the prior's m_last mixes the input's recent items, the one k steps back weighted decay^k "
        "(normalised): a session's interest spans more than its last item. 0 = the last item alone. 0.5 "
        "raised validation NDCG@10 over 0 by 0.9 % on Beauty and 1.5 % on Scientific (3 seeds, "
        "docs/RESULTS.md)",
    )
    exclude_seen: Literal["auto", "never", "always"] = Field(
        "auto",
        description="whether the student ever recommends an item already in its input: auto = chosen on "
        "validation with the prior's weight, so it only matters when eval.mask_history is false (on files "
        "where no user buys an item twice, recommending one is always a miss); saved with the model and "
        "applied wherever it scores (evaluate, recommend, serving)",
    )
    id_init_scale: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="the ID embeddings start at N(0, (id_init_scale / sqrt(hidden))^2); 0 starts them at "
        "zero, so an item's output embedding starts as its modality part alone",
    )
    attributes: bool = Field(
        True,
        description="add to each item's ID embedding the mean of its attributes' embeddings (the catalogue's "
        "data.attribute_columns; an attribute held by one item only is dropped), so a rarely bought item "
        "shares what its brand and categories learned from the others; nothing when the catalogue has none",
    )
    hidden: int = Field(
        64,
        ge=4,
        le=65_536,
        description="hidden size (Beauty and Scientific configs: 128 = correlate.dim, so the item "
        "projection does not compress the teacher: 2-3 % better on validation there, a larger distillation "
        "effect, 1.5x the training time; the demo gains nothing from it)",
    )
    layers: int = Field(2, ge=1, le=1024, description="backbone layers")
    heads: int = Field(2, ge=1, le=1024, description="attention heads (sasrec, bsarec: must divide hidden)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of the backbone")
    max_len: int = Field(50, ge=2, le=100_000, description="the most recent items a sequence keeps")
    batch_size: int = Field(
        256, ge=1, le=10_000_000, description="sequences per step, all processes together (Beauty: 128)"
    )
    lr: float = Field(
        3e-3, gt=0.0, description="peak LR: warm-up over warmup_epochs, then cosine decay to 0 over epochs"
    )
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        description="AdamW weight decay (not on biases, norms, embeddings or the modality tables)",
    )
    warmup_epochs: int = Field(1, ge=0, le=1_000_000, description="linear LR warm-up")
    cosine: bool = Field(True, description="cosine decay after the warm-up (false: constant)")
    epochs: int = Field(30, ge=1, le=1_000_000, description="the epoch budget (Beauty: 20; the suite: 50)")
    patience: int = Field(10, ge=1, le=1_000_000, description="early stopping on validation NDCG@10")
    eval_every: int = Field(1, ge=1, le=1_000_000, description="epochs between validations")
    loss: Literal["ce", "sampled_softmax"] = Field(
        "ce",
        description="ce (the full catalogue) | sampled_softmax (the target against train.num_negatives "
        "sampled items shared by the batch, drawn as train.negatives, accidental hits masked, logQ-corrected: "
        "the step's loss computes only the rows it uses)",
    )
    future_targets: int = Field(
        0,
        ge=0,
        le=100,
        description="ce: the items after the next one that are also targets of each training position, as a "
        "soft label: the next item weighs 1, the d-th after it future_weight x future_decay^(d-1), normalised "
        "to sum 1 (items past the end of the training sequence left out); teaches what a user buys a few "
        "steps later, not only next; 0: the next item only",
    )
    future_weight: float = Field(
        0.3,
        ge=0.0,
        le=100.0,
        description="future_targets: the weight of the item after next (the next weighs 1)",
    )
    future_decay: float = Field(
        0.5, ge=0.0, le=1.0, description="future_targets: each further step multiplies the weight by this"
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="ce: the share of each position's label spread evenly over the whole catalogue (torch's "
        "label_smoothing; with future_targets, of the soft label): a regulariser that keeps the logits from "
        "growing ever more confident; 0: off",
    )
    num_negatives: int = Field(
        1024,
        ge=1,
        le=100_000_000,
        description="sampled_softmax: negatives drawn per batch, shared by its rows (mixed: the extras "
        "beside the batch's targets)",
    )
    negatives: Literal["uniform", "popularity", "mixed", "mixed_popularity"] = Field(
        "uniform",
        description="sampled_softmax: where the negatives come from: uniform (every item alike) | "
        "popularity (q(j) proportional to (training target count + 1)^negative_alpha) | mixed (the batch's "
        "distinct targets + num_negatives uniform extras) | mixed_popularity (the batch's targets + "
        "popularity extras)",
    )
    negative_alpha: float = Field(
        0.75,
        ge=0.0,
        le=4.0,
        description="popularity, mixed_popularity: the power of the training target counts (1: the "
        "counts' own distribution, 0: uniform)",
    )
    logq_correction: bool = Field(
        True,
        description="sampled_softmax: subtract log of each negative's expected count in the sample, "
        "log E[n_j], from its logit (the positive's stays as is), so the sampled loss tends to the full "
        "softmax as num_negatives grows; false: the plain logits, biased toward popular items",
    )
    embedding_updates: Literal["auto", "dense", "sparse"] = Field(
        "auto",
        description="how the optimiser updates the ID embeddings and modality tables: dense (AdamW over every "
        "row at every step) | sparse (sampled_softmax only: only the rows of the step's items get a gradient "
        "and move, lazy Adam: torch's SparseAdam, so a step's cost does not grow with the catalogue) | auto "
        "(sparse with sampled_softmax from 100,000 items, dense otherwise)",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the initialisation and the batches")
    device: Device = Field("auto", description="auto: CUDA when present, else CPU")
    precision: Precision = Field(
        "auto",
        description="bf16 autocast of the training step; auto = bfloat16 on CUDA and on CPUs with "
        "AMX/AVX512-BF16 (0.69x the float32 step time there, test figures within 0.4 %, ~1.5 GB more peak "
        "memory on CPU; bitwise reproducible on CPU on 1 thread only, as float32); validation and evaluation "
        "always score in float32",
    )
    compile: bool = Field(False, description="torch.compile the model")
    kd: KDParams = Field(
        default_factory=KDParams,
        description="distillation; the defaults are what the distillation screen selected on validation "
        "NDCG@10 on Beauty and Scientific (docs/RESULTS.md)",
    )
    async_lr: AsyncLRParams = Field(
        default_factory=AsyncLRParams, description="the modality tables' asynchronous learning rate"
    )
    bsarec: BSARecParams = Field(default_factory=BSARecParams, description="backbone bsarec only")
    session_graph: SessionGraphParams = Field(
        default_factory=SessionGraphParams, description="backbone session_graph only"
    )
    refresh: RefreshParams = Field(
        default_factory=RefreshParams,
        description="after the choices on validation, the model learns each user's validation step too",
    )

    @field_validator("last_item_prior", "transition_prior")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= w <= 100.0 for w in v):
            raise ValueError(f"every weight must lie in [0, 100], got {v}")
        return v

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
        if self.embedding_updates == "sparse" and self.loss != "sampled_softmax":
            raise ValueError(
                "embedding_updates sparse needs loss sampled_softmax (the full softmax sends a gradient to every "
                "row of the tables at every step): set train.loss: sampled_softmax or embedding_updates: dense"
            )
        if self.future_targets > 0 and self.loss != "ce":
            raise ValueError(
                "future_targets needs loss ce (the sampled softmax scores one target per position): set "
                "train.future_targets: 0 or train.loss: ce"
            )
        if self.label_smoothing > 0 and self.loss != "ce":
            raise ValueError(
                "label_smoothing needs loss ce (it spreads the label over the whole catalogue, which the sampled "
                "softmax does not score): set train.label_smoothing: 0 or train.loss: ce"
            )
        if self.backbone == "session_graph" and self.fusion == "concat":
            raise ValueError(
                "fusion concat does not work with backbone session_graph (its items have one part more than "
                "the catalogue's): use sum, gate or paper_gate"
            )
        return self
