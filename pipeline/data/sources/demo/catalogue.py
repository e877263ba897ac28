"""The demo catalogue (items in ordered families, heavy-tailed popularity) and the users' walks through it.

See :mod:`pipeline.data.sources.demo` for the structure. Random streams are separate per part (catalogue,
users, text, images: :func:`rng_stream`), so e.g. changing the number of users keeps the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import DemoParams

_EPOCH_2010 = 1_262_304_000  # 2010-01-01 UTC
_DAY = 86_400
_STEP_OFFSETS = np.array([1, 2, 3])
_STEP_PROBS = np.array([0.6, 0.28, 0.12])
NOISE_PROB = 0.08  # a step jumps to a globally popular item
SWITCH_PROB = 0.12  # a two-family user switches family at a step
SECOND_FAMILY_PROB = 0.35
REPEAT_FRACTION = 0.005  # reviews repeated later by the same user (removed by ingest's dedup)


@dataclass(frozen=True)
class DemoCatalogue:
    """The items, as arrays indexed by item index 0..N-1.

    Attributes:
        asin: (N,) item ids (``B`` + 9 base-36 characters).
        family: (N,) family index 0..F-1.
        position: (N,) rank in the family's order 0..size-1.
        family_size: (F,) items per family.
        popularity: (N,) sampling weight, sums to 1 (heavy-tailed).
    """

    asin: np.ndarray
    family: np.ndarray
    position: np.ndarray
    family_size: np.ndarray
    popularity: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.asin.size)

    @property
    def n_families(self) -> int:
        return int(self.family_size.size)


@dataclass(frozen=True)
class DemoInteractions:
    """The generated reviews, sorted by user then time (repeated reviews included).

    Attributes:
        user_id: (U,) reviewer ids; ``user`` indexes it.
        user: (M,) user index.
        item: (M,) item index into the catalogue.
        ts: (M,) unix time in seconds (whole days, strictly increasing within a user's walk).
        rating: (M,) 1..5.
    """

    user_id: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    rating: np.ndarray


def rng_stream(seed: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of the demo seeded with ``seed`` (one stream per generated part)."""
    return np.random.default_rng([seed, stream])


def _base36_ids(rng: np.random.Generator, n: int, prefix: str, width: int) -> np.ndarray:
    """``n`` distinct ids ``prefix`` + ``width`` upper-case base-36 characters (vectorised)."""
    space = 36**width
    codes = rng.integers(0, space, size=n, dtype=np.int64)
    while True:  # redraw the (rare) collisions until all are distinct
        _, first = np.unique(codes, return_index=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        codes[dup] = rng.integers(0, space, size=int(dup.sum()), dtype=np.int64)
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    powers = 36 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    chars = alphabet[(codes[:, None] // powers) % 36]  # (n, width) ascii codes
    raw = np.concatenate([np.full((n, 1), ord(prefix), dtype=np.uint8), chars], axis=1)
    return raw.view(f"S{width + 1}").ravel().astype(f"U{width + 1}")


def generate_catalogue(demo: DemoParams) -> DemoCatalogue:
    """Assign items to families (equal sizes +- 1), family order and heavy-tailed popularity."""
    rng = rng_stream(demo.seed, 1)
    n, f = demo.items, demo.families
    perm = rng.permutation(n)
    family = (perm % f).astype(np.int32)
    position = (perm // f).astype(np.int32)
    family_size = np.bincount(family, minlength=f).astype(np.int32)
    # Zipf-like family weights over a random family ranking, Pareto item weights within a family
    family_weight = 1.0 / (rng.permutation(f) + 1.0) ** 0.9
    item_weight = rng.pareto(1.2, size=n) + 1.0
    within = item_weight / np.bincount(family, weights=item_weight, minlength=f)[family]
    popularity = within * (family_weight / family_weight.sum())[family]
    asin = _base36_ids(rng, n, "B", 9)
    return DemoCatalogue(asin, family, position, family_size, popularity / popularity.sum())


def _family_items(cat: DemoCatalogue) -> tuple[np.ndarray, np.ndarray]:
    """(items ordered by family then position, start offset of each family in that array)."""
    order = np.lexsort((cat.position, cat.family)).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(cat.family_size)[:-1]]).astype(np.int64)
    return order, start


def generate_interactions(demo: DemoParams, cat: DemoCatalogue, users: int | None = None) -> DemoInteractions:
    """Walk every user through one or two families (see the module docstring).

    Args:
        demo: size knobs and seed (``users``, ``min_len``, ``max_len``).
        cat: the catalogue.
        users: overrides ``demo.users`` (benchmarks).
    """
    rng = rng_stream(demo.seed, 2)
    n_users = demo.users if users is None else users
    size = cat.family_size.astype(np.int64)
    fam_items, start = _family_items(cat)
    pop = cat.popularity
    pop_cdf = np.cumsum(pop)
    fam_pop = np.bincount(cat.family, weights=pop, minlength=cat.n_families) ** 0.7
    fam_pop /= fam_pop.sum()

    extra = np.floor(rng.exponential((demo.max_len - demo.min_len) / 3.0, n_users)).astype(np.int64)
    lengths = np.minimum(demo.min_len + extra, demo.max_len)  # short sequences most common, as in real data
    fam_a = rng.choice(cat.n_families, size=n_users, p=fam_pop)
    second = rng.choice(cat.n_families, size=n_users, p=fam_pop)
    fam_b = np.where(rng.random(n_users) < SECOND_FAMILY_PROB, second, fam_a)

    def popular_start(fams: np.ndarray) -> np.ndarray:  # best of 3 uniform positions: skewed to popular
        cand = np.floor(rng.random((fams.size, 3)) * size[fams][:, None]).astype(np.int64)
        weight = pop[fam_items[start[fams][:, None] + cand]]
        return cand[np.arange(fams.size), weight.argmax(axis=1)]

    pos = np.stack([popular_start(fam_a), popular_start(fam_b)], axis=1)  # (U, 2) position per family
    current = np.zeros(n_users, dtype=np.int64)  # 0: first family, 1: second
    rows = np.arange(n_users)
    seq = np.empty((n_users, demo.max_len), dtype=np.int64)
    for t in range(demo.max_len):
        if t > 0:
            current ^= (fam_a != fam_b) & (rng.random(n_users) < SWITCH_PROB)
        fams = np.where(current == 1, fam_b, fam_a)
        if t > 0:  # 1-3 steps forward in the family order, popular items favoured
            p = pos[rows, current]
            cand = (p[:, None] + _STEP_OFFSETS) % size[fams][:, None]
            w = _STEP_PROBS * np.sqrt(pop[fam_items[start[fams][:, None] + cand]])
            cw = np.cumsum(w, axis=1)
            pick = (cw < (rng.random(n_users) * cw[:, -1])[:, None]).sum(axis=1)
            pos[rows, current] = cand[rows, np.minimum(pick, 2)]
        item = fam_items[start[fams] + pos[rows, current]]
        noise = rng.random(n_users) < NOISE_PROB
        if t > 0 and noise.any():
            item[noise] = np.minimum(np.searchsorted(pop_cdf, rng.random(int(noise.sum()))), cat.n_items - 1)
        seq[:, t] = item

    mask = np.arange(demo.max_len)[None, :] < lengths[:, None]
    gaps = rng.geometric(0.08, size=(n_users, demo.max_len))  # whole days, >= 1
    ts = _EPOCH_2010 + rng.integers(0, 4 * 365, n_users)[:, None] * _DAY + np.cumsum(gaps, axis=1) * _DAY
    user = np.broadcast_to(rows[:, None], seq.shape)[mask]
    item, ts = seq[mask], ts[mask]
    # a few repeated reviews of an item the user already reviewed, some days later
    rep = np.flatnonzero(rng.random(item.size) < REPEAT_FRACTION)
    if rep.size:
        user = np.concatenate([user, user[rep]])
        item = np.concatenate([item, item[rep]])
        ts = np.concatenate([ts, ts[rep] + rng.integers(1, 30, rep.size) * _DAY])
    order = np.lexsort((ts, user))
    rating = rng.choice(np.arange(1, 6, dtype=np.int8), size=item.size, p=[0.05, 0.06, 0.1, 0.24, 0.55])
    return DemoInteractions(
        user_id=_base36_ids(rng, n_users, "A", 12),
        user=user[order].astype(np.int32),
        item=item[order].astype(np.int32),
        ts=ts[order].astype(np.int64),
        rating=rating,
    )
