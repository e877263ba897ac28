"""Training set-up: everything the loop needs, built from the params and the input artefacts.

Reads the sequences and the supervision (checking they belong together), builds the student with its teacher
initialisation, the training windows and validation cases, the optimiser (dense or sparse table updates) with
its parameter groups and LR schedule, and names the run's checkpoint after everything that determines its
result.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.artifacts import read_sequences
from pipeline.artifacts.items import read_attributes
from pipeline.artifacts.neighbours import read_neighbours
from pipeline.config import EvalParams, ParamsView, TrainParams, section_dict
from pipeline.devices import resolve_precision
from pipeline.errors import PipelineError
from pipeline.evaluation.cases import EvalCases, cases_from_sequences
from pipeline.layout import ITEMS, neighbours_file, teacher_file
from pipeline.lineage import check_items_of_sequences, check_supervision, check_supervision_files
from pipeline.models import Student, StudentConfig
from pipeline.supervision.scores import TeacherCorrelation, pair_scores
from pipeline.tracking import file_digest
from pipeline.training.batches import training_windows
from pipeline.training.checkpoint import checkpoint_key
from pipeline.training.diagnostics import random_pairs
from pipeline.training.optim import SplitAdam, build_optimizer
from pipeline.training.schedule import LRScheduler

log = logging.getLogger(__name__)

DIAGNOSTIC_PAIRS = 20_000  # random item pairs on which teacher agreement is measured each epoch


@dataclass
class Training:
    """What the training loop works with (see :func:`build_training`)."""

    modalities: list[str]
    num_items: int
    teachers: dict[str, TeacherCorrelation]  # on the training device
    model: Student
    kd_on: bool  # a modality and a non-zero distillation weight
    neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]]  # modality -> (table, counts) of neighbour pairs
    windows: torch.Tensor  # (U', L+1) training windows on the device
    lengths: torch.Tensor  # (U',) non-padding length of each window, on CPU
    valid_cases: EvalCases
    steps_per_epoch: int
    mean_targets: float  # next-item targets per batch
    optimizer: torch.optim.Optimizer | SplitAdam  # SplitAdam: sparse table updates (train.embedding_updates)
    scheduler: LRScheduler
    score_fn: Callable[..., torch.Tensor]  # the correlation function of correlate.score
    diag_pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # fixed pairs of the retention diagnostics
    fwd_model: torch.nn.Module  # the model, compiled when train.compile
    autocast: bool  # bf16 autocast of the training step (train.precision)
    ckpt_path: Path


def item_attributes(
    train: TrainParams | ParamsView, items_path: Path, sequences_path: Path, num_items: int
) -> tuple[torch.Tensor, list[str]]:
    """The attribute ids of items 0..N and the attributes' names (:func:`read_attributes`), when
    ``train.attributes`` and the catalogue has some; else an empty table and no names."""
    none = torch.zeros((num_items + 1, 0), dtype=torch.long), []
    if not train.attributes or not items_path.exists():
        return none
    table, names = read_attributes(items_path, num_items)
    if not names:
        return none
    check_items_of_sequences(items_path, sequences_path)  # the attributes must be those of these items
    held = int((table[1:] > 0).any(1).sum())
    log.info(
        "attributes: %d, held by %d of %d items (at most %d each)",
        len(names),
        held,
        num_items,
        table.shape[1],
    )
    return torch.from_numpy(table), names


def build_training(
    train: TrainParams | ParamsView,
    score: str,
    eval_params: EvalParams | ParamsView,
    sequences_path: Path,
    supervision_dir: Path,
    checkpoint_root: Path,
    device: torch.device,
) -> Training:
    """Everything the loop needs; fails (naming the files) on supervision that does not fit the sequences."""
    modalities = list(train.modalities)
    seqs = read_sequences(sequences_path)
    check_supervision(supervision_dir, sequences_path, modalities)  # stale supervision: fail, naming digests
    check_supervision_files(supervision_dir, modalities)  # a file swapped in from another run: fail
    num_items = seqs.num_items
    teachers: dict[str, TeacherCorrelation] = {}
    for m in modalities:
        try:
            teachers[m] = TeacherCorrelation.from_dir(supervision_dir, m, score)
        except FileNotFoundError as err:
            raise PipelineError(f"{err} (train.modalities includes {m!r}; run the correlate stage)") from None
        n_rows = teachers[m].teacher.shape[0]
        if n_rows - 1 < num_items:
            raise PipelineError(
                f"{teacher_file(supervision_dir, m)} covers {n_rows - 1} items but "
                f"{sequences_path} uses item ids up to {num_items}"
            )
        num_items = max(num_items, n_rows - 1)
    dims = {t.teacher.shape[1] for t in teachers.values()}
    if len(dims) > 1:
        raise PipelineError(f"teacher vectors of {modalities} have different dimensions {sorted(dims)}")
    layouts = {(t.codes, t.code_groups) for t in teachers.values()}  # K, and 0 (k-means) or D (vq)
    if len(layouts) > 1:
        raise PipelineError(
            f"the codebooks of {modalities} differ in (codes, code groups): {sorted(layouts)} "
            "(rerun the correlate stage)"
        )
    num_codes, code_groups = layouts.pop() if layouts else (0, 0)
    items_path = Path(sequences_path).with_name(ITEMS)
    attributes, attribute_names = item_attributes(train, items_path, sequences_path, num_items)
    cfg = StudentConfig.from_train(
        train,
        num_items=num_items,
        modalities=tuple(modalities),
        modality_dim=dims.pop() if dims else 0,
        num_codes=num_codes,
        code_groups=code_groups,
        num_attributes=len(attribute_names),
        attribute_width=attributes.shape[1] if attribute_names else 0,
    )
    teacher_init = {m: t.teacher for m, t in teachers.items()}
    model = Student(cfg, teacher_init, attributes if attribute_names else None).to(device)
    teachers = {m: t.to(device) for m, t in teachers.items()}
    kd_on = bool(modalities) and (train.kd.holistic_weight > 0 or train.kd.code_weight > 0)
    neighbour_files = (
        {m: neighbours_file(supervision_dir, m) for m in modalities}
        if kd_on and train.kd.neighbour_pairs > 0
        else {}
    )
    neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m, path in neighbour_files.items():
        try:
            table, counts = read_neighbours(path, num_items)
        except FileNotFoundError:
            raise PipelineError(
                f"{path} is missing (train.kd.neighbour_pairs > 0; run the correlate stage)"
            ) from None
        neighbours[m] = (table.to(device), counts.to(device))

    windows = training_windows(seqs, train.max_len)  # (U', L+1) on CPU
    lengths = (windows != 0).sum(1)
    valid_cases = cases_from_sequences(seqs, "valid", train.max_len)
    windows = windows.to(device)
    steps_per_epoch = math.ceil(len(windows) / train.batch_size)
    mean_targets = float((windows[:, 1:] != 0).sum()) / steps_per_epoch  # next-item targets per batch

    optimizer = build_optimizer(model, train, num_items)
    scheduler = LRScheduler(
        optimizer, train.lr, steps_per_epoch, train.epochs, train.warmup_epochs, train.cosine, train.async_lr
    )
    score_fn = functools.partial(pair_scores, score=score)
    # a fixed random pair sample per modality for the retention diagnostics (same pairs every epoch)
    diag_pairs = {m: random_pairs(t, DIAGNOSTIC_PAIRS, seed=0) for m, t in teachers.items()}
    fwd_model = torch.compile(model) if train.compile else model
    autocast = resolve_precision(train.precision, device) == "bfloat16"

    config_payload = {
        "train": section_dict(train),
        "score": score,
        "eval": section_dict(eval_params),
        "sequences": file_digest(sequences_path),
        "supervision": {m: file_digest(teacher_file(supervision_dir, m)) for m in modalities},
    }
    if neighbour_files:
        config_payload["neighbours"] = {m: file_digest(path) for m, path in neighbour_files.items()}
    if attribute_names:
        config_payload["items"] = file_digest(items_path)
    ckpt_path = Path(checkpoint_root) / checkpoint_key(config_payload) / "last.pt"
    return Training(
        modalities=modalities,
        num_items=num_items,
        teachers=teachers,
        model=model,
        kd_on=kd_on,
        neighbours=neighbours,
        windows=windows,
        lengths=lengths,
        valid_cases=valid_cases,
        steps_per_epoch=steps_per_epoch,
        mean_targets=mean_targets,
        optimizer=optimizer,
        scheduler=scheduler,
        score_fn=score_fn,
        diag_pairs=diag_pairs,
        fwd_model=fwd_model,
        autocast=autocast,
        ckpt_path=ckpt_path,
    )
