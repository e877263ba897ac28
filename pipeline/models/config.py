"""The student's configuration: everything needed to rebuild a student, stored as JSON next to its weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.config.train import TrainParams


def _lookup(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _train(key: str) -> Any:
    """A field that is the params key ``train.<key>``: its default is the schema's (:meth:`StudentConfig.from_train`
    passes the params' value)."""
    return dataclasses.field(default=_lookup(TrainParams(), key), metadata={"train": key})


@dataclass(frozen=True)
class StudentConfig:
    """Everything needed to rebuild a student; stored as JSON next to its weights.

    A field made with ``_train(key)`` is the params key ``train.<key>``: its default comes from the schema and
    :meth:`from_train` fills it from the params, so neither can drift from pipeline/config/. The other fields
    are fixed by the data (the catalogue, the supervision files)."""

    num_items: int  # N (ids 1..N; the tables have N+1 rows)
    backbone: str = _train("backbone")
    hidden: int = _train("hidden")
    layers: int = _train("layers")
    heads: int = _train("heads")
    dropout: float = _train("dropout")
    max_len: int = _train("max_len")
    modalities: tuple[str, ...] = ()
    modality_dim: int = 128
    fusion: str = _train("fusion")
    num_codes: int = 50  # K of the dissected-correlation codebook (0: no code head)
    # the code layout: 0 = one code per pair (k-means codebook; logits (P, K)); D >= 1 = one code per
    # sub-vector (vq codebook; logits (P, D, K), one head per sub-vector)
    code_groups: int = 0
    # the item attributes (train.attributes): V attribute embeddings, and the most attributes an item has (the
    # width of the saved attribute_ids buffer); 0: none
    num_attributes: int = 0
    attribute_width: int = 0
    output: str = _train("output")
    kd_projection: str = _train("kd.projection")
    scoring: str = _train("scoring")
    temperature: float = _train("temperature")
    bsarec_alpha: float = _train("bsarec.alpha")
    bsarec_window: int = _train("bsarec.window")
    id_init_scale: float = _train("id_init_scale")
    # w of the last-item prior (Student.user_scores), chosen on validation after training; 0 = none
    last_item_prior: float = 0.0
    # the prior's fixed scale in the training logits and wherever the model scores (train.prior_in_training)
    prior_in_training: float = _train("prior_in_training")
    prior_decay: float = _train("prior_decay")  # the prior's weight of the item k steps back: decay^k
    # never recommend an item of the input (train.exclude_seen; with "auto", chosen on validation)
    exclude_seen: bool = False
    # w of the transition prior (pipeline.models.transitions), chosen on validation after training; 0 = none
    transition_prior: float = 0.0
    # entries of the saved transition table (buffers transition_*); 0 = the model has none
    transition_entries: int = 0
    session_graph_last_n: int = _train("session_graph.last_n")
    session_graph_attention_dropout: float = _train("session_graph.attention_dropout")

    #: what a config.json without the key means: the behaviour from before the key existed. Fixed values, not
    #: the defaults above (those follow the schema), so an old model loads as it was trained
    _ABSENT: ClassVar[dict[str, object]] = {
        "output": "fused",
        "kd_projection": "identity",
        "code_groups": 0,
        "num_attributes": 0,
        "attribute_width": 0,
        "scoring": "dot",
        "temperature": 0.1,
        "bsarec_alpha": 0.7,
        "bsarec_window": 0,
        "id_init_scale": 1.0,
        "last_item_prior": 0.0,
        "prior_in_training": 0.0,
        "prior_decay": 0.0,
        "exclude_seen": False,
        "transition_prior": 0.0,
        "transition_entries": 0,
        "session_graph_last_n": 2,
        "session_graph_attention_dropout": 0.2,
    }
    #: keys written to config.json only when they differ from their ``_ABSENT`` value, so the config of a
    #: model that does not use them reads exactly as before they existed
    _OPTIONAL: ClassVar[tuple[str, ...]] = (
        "code_groups",
        "num_attributes",
        "attribute_width",
        "scoring",
        "temperature",
        "bsarec_alpha",
        "bsarec_window",
        "id_init_scale",
        "last_item_prior",
        "prior_in_training",
        "prior_decay",
        "exclude_seen",
        "transition_prior",
        "transition_entries",
        "session_graph_last_n",
        "session_graph_attention_dropout",
    )

    @classmethod
    def from_train(cls, train: Any, **fixed: Any) -> StudentConfig:
        """The config of a student built with the ``train`` params (a section or a stage's view of it);
        ``fixed``: the fields the data fixes (num_items, modalities, modality_dim, num_codes, code_groups,
        num_attributes, attribute_width)."""
        keys = {f.name: f.metadata["train"] for f in dataclasses.fields(cls) if "train" in f.metadata}
        return cls(**{name: _lookup(train, key) for name, key in keys.items()}, **fixed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        for key in self._OPTIONAL:
            if d[key] == self._ABSENT[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown student config keys: {sorted(unknown)}")
        d = {**cls._ABSENT, **d}
        d["modalities"] = tuple(d.get("modalities", ()))
        return cls(**d)
