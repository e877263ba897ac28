"""The plan of an experiment suite: its variants (overrides of a base config), their twins, and the runs.

Every KDSR variant has a **twin** (:data:`TWINS`): the same overrides with the distillation weights at zero,
so the report can measure the effect of distillation alone, paired over users and over seeds. The folder of a
suite is described in :mod:`pipeline.experiments.suite`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params, with_overrides
from pipeline.errors import PipelineError
from pipeline.layout import Layout

log = logging.getLogger(__name__)

# asynchronous LR); popularity is not trained: it comes from every evaluate report. The twins of the KDSR
# variants are added below (see :func:`twin_overrides`).
_VARIANTS: dict[str, dict[str, Any]] = {
    "sasrec_id": {"train.modalities": [], "train.attributes": False},  # IDs alone: no text, no attributes
    "sasrec_modality": {
        "train.kd.holistic_weight": 0.0,
        "train.kd.code_weight": 0.0,
        "train.async_lr.schedule": "none",
    },
    "kdsr": {},
    "kdsr_holistic_only": {"train.kd.code_weight": 0.0},
    "kdsr_codes_only": {"train.kd.holistic_weight": 0.0},
    "kdsr_no_async": {"train.async_lr.schedule": "none"},
    "kdsr_gru4rec": {"train.backbone": "gru4rec"},
    "kdsr_bsarec": {"train.backbone": "bsarec"},
    # the authors' student: the session graph with its four-way gate (paper_gate over ID, graph and
    # modalities) and the authors' 0.4 dropout on each fused item; the scoring side is the base config's
    "kdsr_session_graph": {
        "train.backbone": "session_graph",
        "train.fusion": "paper_gate",
        "train.dropout": 0.4,
    },
}
KD_WEIGHTS = ("train.kd.holistic_weight", "train.kd.code_weight")  # all a twin changes
TWIN_SUFFIX = "_twin"


def twin_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's twin: the same overrides with every distillation weight at zero (docs/DESIGN.md: Student
    wirings and twins).

    Same wiring, same asynchronous LR, same everything else, so variant - twin is the effect of KD alone;
    ``--set`` overrides go to the base config and so reach both members of a pair.
    """
    return {**overrides, **dict.fromkeys(KD_WEIGHTS, 0.0)}


def _distils(name: str, overrides: dict[str, Any]) -> bool:
    """Whether a variant is a KDSR configuration: a ``kdsr*`` variant that keeps a distillation term."""
    return name.startswith("kdsr") and not all(overrides.get(k) == 0 for k in KD_WEIGHTS)


def _add_twins(variants: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``variants`` with a ``<name>_twin`` after each KDSR variant, and the map variant -> its twin.

    A twin whose overrides equal those of a variant already there is not added: that variant is the twin
    (``kdsr_holistic_only`` and ``kdsr_codes_only`` share ``kdsr_twin``; ``kdsr_no_async``'s is
    ``sasrec_modality``).
    """
    out: dict[str, dict[str, Any]] = {}
    twins: dict[str, str] = {}
    for name, overrides in variants.items():
        out[name] = overrides
        if not _distils(name, overrides):
            continue
        twin = twin_overrides(overrides)
        same = next((v for v, o in {**variants, **out}.items() if o == twin), None)
        twins[name] = same or name + TWIN_SUFFIX
        if same is None:
            out[name + TWIN_SUFFIX] = twin
    return out, twins


VARIANTS, TWINS = _add_twins(_VARIANTS)
MAIN_VARIANTS = ("sasrec_id", "sasrec_modality", "kdsr", "kdsr_twin")  # run over `seeds` seeds
ABLATIONS = tuple(v for v in VARIANTS if v not in MAIN_VARIANTS)  # `ablation_seeds` seeds
BASELINES = ("sasrec_id", "sasrec_modality")  # the non-distillation baselines KDSR is compared with
SUITE_FILE = "suite.json"
UNTRACKED: dict[str, Any] = {"mlflow": True, "embed": {"cache_dir"}}  # keys that never change a result
SUITE_TAG = "suite.out"  # MLflow tag on the parent run: the absolute suite folder


RUN_SUMMARY = "summary.json"  # in a run folder: the training summary
RUN_PARAMS = "params.json"  # in a run folder: the run's params and the shared data's fingerprints


def suite_layout(out: Path, run_dir: Path | None = None) -> Layout:
    """The artefacts of the suite folder ``out``: shared data under ``out/data``, one run's in ``run_dir``."""
    return Layout.flat(Path(out) / "data", run_dir)


def suite_run_dir(out: Path, variant: str, seed_index: int) -> Path:
    """The folder of one run of the suite ``out``: ``out/runs/<variant>/seed<k>``."""
    return Path(out) / "runs" / variant / f"seed{seed_index}"


def suite_run_dirs(out: Path) -> list[tuple[str, int, Path]]:
    """``(variant, seed_index, folder)`` of every run folder under ``out/runs``, sorted by path."""
    found = []
    for run_dir in sorted(Path(out).glob("runs/*/seed*")):
        seed = run_dir.name.removeprefix("seed")
        if run_dir.is_dir() and seed.isdigit():
            found.append((run_dir.parent.name, int(seed), run_dir))
    return found


@dataclass(frozen=True)
class RunSpec:
    """One training + evaluation run of the suite."""

    variant: str
    seed_index: int
    params: Params
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed_index}"


# --------------------------------------------------------------------------------------------- planning
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=5", "train.modalities=[text]"]`` -> ``{"train.epochs": 5, ...}`` (values as YAML).

    Raises:
        PipelineError: an item without ``=`` or with a value that is not valid YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise PipelineError(f"--set {item!r}: value is not valid YAML ({err})") from None
    return out


def variant_seeds(
    variants: Sequence[str] | None, seeds: int, ablation_seeds: int, twins: bool = True
) -> dict[str, int]:
    """How many seeds each requested variant runs over (all variants when ``variants`` is None).

    With ``twins`` each KDSR variant brings its twin (:data:`TWINS`), placed right after it and run over at
    least as many seeds, so every seed of the variant has its twin. Without, ``variants=None`` means the
    variants other than the added ``*_twin`` ones.
    """
    if variants is None:
        names = [v for v in VARIANTS if twins or v in _VARIANTS]
    else:
        names = list(dict.fromkeys(variants))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise PipelineError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if seeds < 1 or ablation_seeds < 1:
        raise PipelineError(f"seeds ({seeds}) and ablation seeds ({ablation_seeds}) must be >= 1")
    own = {v: (ablation_seeds if v in ABLATIONS else seeds) for v in names}
    if not twins:
        return own
    counts: dict[str, int] = {}
    for v in names:
        counts[v] = max(counts.get(v, 0), own[v])
        if v in TWINS:
            twin = TWINS[v]
            counts[twin] = max(counts.get(twin, 0), own.get(twin, 0), own[v])
    return counts


def plan_runs(base: Params, out: Path, counts: dict[str, int]) -> list[RunSpec]:
    """The runs of a suite, seed-major: each variant's overrides applied to ``base``, seed k -> train.seed + k.

    Raises:
        PipelineError: a modality variant while the base config has no modality, or overrides that do not
            validate.
    """
    specs: list[RunSpec] = []
    for variant, n in counts.items():
        if variant != "sasrec_id" and not base.train.modalities:
            raise PipelineError(
                f"variant {variant!r} needs modalities, but the base config has train.modalities: []"
            )
        for k in range(n):
            params = with_overrides(base, {**VARIANTS[variant], "train.seed": base.train.seed + k})
            specs.append(RunSpec(variant, k, params, suite_run_dir(out, variant, k)))
        kd = with_overrides(base, VARIANTS[variant]).train.kd
        if variant in TWINS and kd.holistic_weight == kd.code_weight == 0:
            log.warning("variant %s distils nothing under this config: it equals its twin", variant)
    # main variants seed-major (every variant's first seed before any second seed, so a partial suite is
    # comparable), then the ablations
    return sorted(specs, key=lambda s: (s.variant in ABLATIONS, s.seed_index))
