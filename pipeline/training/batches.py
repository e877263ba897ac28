"""Pre-tensorised training sequences, length-bucketed batches and within-sequence distillation pairs."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.artifacts.sequences import Sequences


def training_windows(seqs: Sequences, max_len: int) -> torch.Tensor:
    """The last ``max_len + 1`` training items of each user, LEFT-padded with 0: (U, max_len + 1) int64.

    Column t is the input at step t and column t+1 its next-item target; users with fewer than 2 training
    items have no target and are dropped.
    """
    width = max_len + 1
    end = seqs.offsets[:-1] + seqs.train_end  # one past each user's last training item in ``flat``
    kept = np.minimum(seqs.train_end, width)
    users = np.flatnonzero(kept >= 2)
    if len(users) == 0:
        raise ValueError("no user has two or more training items")
    pos = end[users, None] - width + np.arange(width)  # (U', width) positions in ``flat``, right-aligned
    inside = pos >= (end - kept)[users, None]
    return torch.from_numpy(np.where(inside, seqs.flat[np.maximum(pos, 0)], 0).astype(np.int64))


def position_weight(batch_targets: torch.Tensor | int, mean_targets: float) -> torch.Tensor | float:
    """Factor that turns a batch's mean next-item loss into its share of the epoch's mean over positions.

    Length-bucketed batches hold very different numbers of targets (256 short sequences: a few hundred; 256
    long ones: thousands). Averaging within each batch would give every batch the same weight, so a position
    in a short-sequence batch would count many times more than one in a long-sequence batch. Scaling each
    batch mean by ``batch_targets / mean_targets`` (the epoch's average targets per batch) weighs every
    position equally, as random batches would in expectation.
    """
    return batch_targets / mean_targets


def future_targets(
    targets: torch.Tensor, keep: torch.Tensor, n: int, weight: float, decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each kept position's next item and the ``n`` items after it, as a soft label (``train.future_targets``).

    Args:
        targets: (B, T) left-padded next-item ids (0: padding), ``targets[:, t]`` the item after input t.
        keep: (B, T) the positions trained on (``targets != 0``).
        n: how many items after the next one.
        weight, decay: the d-th item after the next weighs ``weight * decay^(d-1)``; the next weighs 1.

    Returns:
        ``(ids, weights)``, both (P, n + 1) for the P kept positions: column d the item d steps after the
        next (0 past the end of the sequence, with weight 0), the weights of a row summing to 1.
    """
    width = targets.shape[1]
    # a row's sequence ends at its last column: nothing comes after it
    padded = torch.nn.functional.pad(targets, (0, n))
    ids = torch.stack([padded[:, d : d + width] for d in range(n + 1)], -1)[keep]
    w = torch.tensor([1.0] + [weight * decay ** (d - 1) for d in range(1, n + 1)], device=ids.device)
    w = w * (ids != 0)
    return ids, w / w.sum(1, keepdim=True)


def bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, chunk_batches: int = 32
) -> list[torch.Tensor]:
    """Shuffled batches of row indices whose lengths are similar, so each batch can be trimmed.

    Rows are shuffled, cut into chunks of ``chunk_batches`` batches, sorted by length within a chunk, batched,
    and the batch order shuffled again: random enough for SGD, little padding.
    """
    perm = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * chunk_batches
    batches = []
    for s in range(0, len(perm), chunk):
        idx = perm[s : s + chunk]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        batches.extend(idx.split(batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order.tolist()]


def trim_left_padding(seq: torch.Tensor) -> torch.Tensor:
    """Drop the columns that are padding in every row of a left-padded batch."""
    longest = int((seq != 0).sum(1).max())
    return seq[:, seq.shape[1] - longest :]


def within_sequence_pairs(
    seq: torch.Tensor, max_pairs: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique unordered pairs of distinct items that co-occur in a sequence of the batch (the paper's KD pairs).

    ``seq`` (B, T) left-padded; returns two (P,) id tensors with i < j, at most ``max_pairs`` (sampled
    uniformly without replacement when there are more).
    """
    T = seq.shape[1]
    iu = torch.triu_indices(T, T, 1, device=seq.device)  # (2, M)
    a, b = seq[:, iu[0]], seq[:, iu[1]]  # (B, M)
    ok = (a > 0) & (b > 0) & (a != b)
    base = int(seq.max()) + 1
    lo = torch.minimum(a[ok], b[ok])
    hi = torch.maximum(a[ok], b[ok])
    key = torch.unique(lo * base + hi)  # sorted, so sampling below is deterministic given the generator
    if key.numel() > max_pairs:
        pick = torch.randperm(key.numel(), generator=generator)[:max_pairs].to(key.device)
        key = key[pick]
    return key // base, key % base


def sequence_pairs(
    seq: torch.Tensor, max_pairs: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unordered pairs of distinct items within each sequence, with the sequence they come from.

    Unlike :func:`within_sequence_pairs` a pair that co-occurs in two sequences appears once per sequence
    (the per-sequence correlation matrices of the authors' Frobenius loss). ``seq`` (B, T) left-padded.

    Returns:
        i, j (P,) ids with i < j; rows (P,) the sequence index in [0, B); weight (P,) float, the pair's
        sequence's pair count divided by its pairs kept (1.0 unless sampling dropped some). At most
        ``max_pairs`` pairs, sampled uniformly without replacement when there are more.
    """
    B, T = seq.shape
    iu = torch.triu_indices(T, T, 1, device=seq.device)  # (2, M)
    a, b = seq[:, iu[0]], seq[:, iu[1]]  # (B, M)
    ok = (a > 0) & (b > 0) & (a != b)
    base = int(seq.max()) + 1
    row = torch.arange(B, device=seq.device).unsqueeze(1).expand_as(a)[ok]
    lo = torch.minimum(a[ok], b[ok])
    hi = torch.maximum(a[ok], b[ok])
    key = torch.unique((row * base + lo) * base + hi)  # sorted: sampling is deterministic given the generator
    total = torch.bincount(key // (base * base), minlength=B)
    if key.numel() > max_pairs:
        pick = torch.randperm(key.numel(), generator=generator)[:max_pairs].to(key.device)
        key = key[pick]
    rows = key // (base * base)
    kept = torch.bincount(rows, minlength=B)
    weight = (total.float() / kept.clamp(min=1).float())[rows]
    rest = key % (base * base)
    return rest // base, rest % base, rows, weight


def catalogue_pairs(
    seq: torch.Tensor, per_sequence: int, num_items: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of an item of each sequence with an item drawn uniformly from the whole catalogue.

    Within-sequence pairs only ever touch the rows of items in the batch, while the full softmax of a tied
    model moves every row of a modality table at every step; these pairs let distillation reach the rest.

    Returns:
        i (items of the sequences), j (uniform in 1..num_items), rows (the sequence of each pair); each
        sequence with an item gets ``per_sequence`` pairs (its items drawn uniformly with replacement).
        The draws come from ``generator`` on the CPU, so every DDP rank cuts the same pairs.
    """
    real = (seq > 0).cpu()
    has = real.any(1)
    rows = torch.arange(seq.shape[0])[has].repeat_interleave(per_sequence)
    if per_sequence <= 0 or rows.numel() == 0:
        empty = seq.new_zeros(0)
        return empty, empty, empty
    pos = torch.multinomial(real[has].float(), per_sequence, replacement=True, generator=generator).reshape(
        -1
    )
    j = torch.randint(1, num_items + 1, (rows.numel(),), generator=generator)
    rows, pos, j = rows.to(seq.device), pos.to(seq.device), j.to(seq.device)
    return seq[rows, pos], j, rows


def neighbour_pairs(
    seq: torch.Tensor,
    neighbours: torch.Tensor,
    counts: torch.Tensor,
    n_pairs: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-neighbour KD pairs: items of the batch, each with one of its holistic top-k neighbours.

    ``n_pairs`` items are drawn uniformly (with replacement) from the distinct items of ``seq`` that have
    neighbours, and each gets a neighbour drawn uniformly from its list. ``neighbours`` (N+1, k) and
    ``counts`` (N+1,) as :func:`pipeline.artifacts.neighbours.read_neighbours` returns them, on ``seq``'s device.
    The random draws come from ``generator`` on the CPU, so every rank of a DDP run cuts the same pairs.
    """
    items = torch.unique(seq[seq > 0])
    items = items[counts[items] > 0]
    if n_pairs <= 0 or items.numel() == 0:
        empty = seq.new_zeros(0)
        return empty, empty
    pick = torch.randint(items.numel(), (n_pairs,), generator=generator).to(seq.device)
    i = items[pick]
    slot = (torch.rand(n_pairs, generator=generator).to(seq.device) * counts[i]).long()
    slot = torch.minimum(slot, counts[i] - 1)  # rand < 1, but float rounding must never reach the count
    return i, neighbours[i, slot]
