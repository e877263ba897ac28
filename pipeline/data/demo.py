"""Deterministic demo data in the real Amazon 2014 formats, with structure that both modalities reveal.

The catalogue is split into F *families*. A family has a colour and a shape (its images) and a pair of
words plus a product type (its titles); its items are ordered, and along that order the image shade and
size change smoothly and the title's variant word changes every few items, so content similarity also
points at an item's neighbours in the order. Users pick one or two families (popular families more often)
and walk mostly forward within a family, one to three steps at a time (popular items favoured), with
occasional jumps to a globally popular item and switches between their families. Item popularity is
heavy-tailed, so many items are rare and only their content says where they belong: a model that uses
modality information can beat an ID-only one.

Everything is vectorised numpy/polars (>= 1,000,000 items in seconds; images are optional). Random streams
are separate per part (catalogue, users, images), so e.g. changing the number of users keeps the catalogue.
Files are written byte-for-byte deterministically (gzip without a timestamp, PNG without metadata).

Raw files (names as the 2014 release): ``reviews_<Category>_5.json.gz`` (strict JSON lines) or
``ratings_<Category>.csv``, ``meta_<Category>.json.gz`` (one Python-literal dict per line, as the real
2014 metadata) and ``images/<asin>.png``. Realistic wrinkles: HTML entities in titles, brands and
categories (``&amp;``), brands with apostrophes (double-quoted literals), categories as a list of lists,
irregular whitespace, some items without title, brand, description or price, and a few repeated reviews.
"""

from __future__ import annotations

import colorsys
import contextlib
import gzip
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from pipeline.config import DemoParams
from pipeline.progress import progress_bar

log = logging.getLogger(__name__)

ADJECTIVES = (
    "Velvet", "Golden", "Crystal", "Silk", "Ocean", "Amber", "Coral", "Ivory", "Jade", "Lunar",
    "Solar", "Misty", "Radiant", "Pure", "Wild", "Honey", "Citrus", "Midnight", "Frosted", "Sunlit",
    "Rosy", "Urban", "Alpine", "Desert", "Tropical", "Vintage", "Glacier", "Meadow", "Ember", "Pearl",
    "Satin", "Copper", "Lavish", "Gentle", "Bold", "Serene", "Vivid", "Dewy", "Zesty", "Noble",
)  # fmt: skip
NOUNS = (
    "Rose", "Orchid", "Lotus", "Jasmine", "Mint", "Vanilla", "Cocoa", "Berry", "Peach", "Fig",
    "Cedar", "Sage", "Aloe", "Argan", "Olive", "Lemon", "Cherry", "Plum", "Ginger", "Bamboo",
    "Almond", "Coconut", "Mango", "Lilac", "Iris", "Tulip", "Poppy", "Willow", "Birch", "Clover",
    "Saffron", "Melon", "Papaya", "Guava", "Juniper", "Basil", "Thyme", "Pepper", "Cotton", "Mocha",
)  # fmt: skip
PRODUCT_TYPES = (  # (sub-category, product type); raw text keeps the HTML entities of the real files
    ("Makeup", "Lip Balm"), ("Makeup", "Lipstick"), ("Makeup", "Nail Polish"), ("Makeup", "Eyeliner"),
    ("Makeup", "Mascara"), ("Makeup", "Foundation"), ("Skin Care", "Face Cream"),
    ("Skin Care", "Cleanser &amp; Toner"), ("Skin Care", "Serum"), ("Skin Care", "Sunscreen"),
    ("Hair Care", "Shampoo &amp; Conditioner"), ("Hair Care", "Hair Oil"), ("Hair Care", "Styling Gel"),
    ("Bath &amp; Body", "Body Wash"), ("Bath &amp; Body", "Bath Salts"), ("Bath &amp; Body", "Hand Cream"),
    ("Fragrance", "Eau de Parfum"), ("Fragrance", "Body Mist"),
    ("Tools &amp; Accessories", "Makeup Brush"), ("Tools &amp; Accessories", "Nail File"),
)  # fmt: skip
VARIANTS = (
    "Mini", "Classic", "Deluxe", "Travel", "Matte", "Gloss", "Sheer", "Intense",
    "Soft", "Bright", "Night", "Day", "Sport", "Sensitive", "Ultra", "Essential",
)  # fmt: skip
BRANDS = (
    "Lumiere", "Nature's Glow", "Aurelia", "L'Atelier", "Bloom &amp; Co", "Verdant", "Silkwood",
    "Maison Clair", "Petal Lab", "Northern Dew", "Solstice", "Opaline", "Kiro", "Belle Rive", "Ostara",
    "Marisol", "Fennel &amp; Fig", "Halcyon", "Iridis", "Juniper Row", "Calla", "Evergreen Apothecary",
    "Pomme", "Tessera",
)  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
SUMMARIES = ("Not for me", "Disappointing", "It's okay", "Really nice", "Love it!")
VERDICTS = ("awful", "weak", "fine", "lovely", "amazing")

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


@dataclass(frozen=True)
class DemoFiles:
    """What :func:`write_demo_raw` wrote, plus the underlying arrays (for tests and benchmarks)."""

    reviews: Path
    meta: Path
    images_dir: Path | None
    catalogue: DemoCatalogue
    interactions: DemoInteractions


def _rng(seed: int, stream: int) -> np.random.Generator:
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
    rng = _rng(demo.seed, 1)
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
    rng = _rng(demo.seed, 2)
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


# --------------------------------------------------------------------------------------------- text
def _family_words(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ADJECTIVES, NOUNS, PRODUCT_TYPES of family ``f`` (distinct pairs for f < 1600)."""
    adj = f % len(ADJECTIVES)
    noun = (f // len(ADJECTIVES) + f) % len(NOUNS)
    ptype = (f * 7) % len(PRODUCT_TYPES)
    return adj, noun, ptype


def _lit(x: pl.Expr) -> pl.Expr:
    """A Python string literal of ``x`` as ``repr`` writes it (double quotes when it holds an apostrophe;
    the vocabulary has no double quote or backslash)."""
    has_apostrophe = x.str.contains("'", literal=True)
    return (
        pl.when(has_apostrophe).then(pl.lit('"') + x + pl.lit('"')).otherwise(pl.lit("'") + x + pl.lit("'"))
    )


def catalogue_text(cat: DemoCatalogue, seed: int = 0) -> pl.DataFrame:
    """Per-item raw fields: asin, family, title (null when missing), brand (null), description (null),
    price (null), group and product type, as the metadata file states them (with HTML entities)."""
    rng = _rng(seed, 3)
    n = cat.n_items
    adj_i, noun_i, type_i = _family_words(cat.family.astype(np.int64))
    adj = np.asarray(ADJECTIVES)[adj_i]
    noun = np.asarray(NOUNS)[noun_i]
    group = np.asarray([g for g, _ in PRODUCT_TYPES])[type_i]
    ptype = np.asarray([t for _, t in PRODUCT_TYPES])[type_i]
    brand = np.asarray(BRANDS)[(cat.family.astype(np.int64) * 5) % len(BRANDS)]
    variant = np.asarray(VARIANTS)[(cat.position // 3 + cat.family) % len(VARIANTS)]
    df = pl.DataFrame(
        {
            "asin": cat.asin,
            "family": cat.family,
            "adj": adj,
            "noun": noun,
            "group": group,
            "ptype": ptype,
            "brand": brand,
            "variant": variant,
            "number": cat.position + 1,
            "ampersand": cat.family % 5 == 2,  # "Adj &amp; Noun" titles
            "wide_space": rng.random(n) < 0.1,  # irregular whitespace
            "has_title": rng.random(n) >= 0.02,
            "has_brand": rng.random(n) >= 0.1,
            "has_description": rng.random(n) < 0.7,
            "has_price": rng.random(n) < 0.85,
            "price": rng.integers(299, 6000, n) / 100.0,
        }
    )
    join = pl.when(pl.col("ampersand")).then(pl.lit(" &amp; ")).otherwise(pl.lit(" "))
    space = pl.when(pl.col("wide_space")).then(pl.lit("  ")).otherwise(pl.lit(" "))
    title = pl.concat_str(
        [pl.col("adj"), join, pl.col("noun"), pl.lit(" "), pl.col("ptype"), pl.lit(" - "), pl.col("variant"),
         space, pl.lit("No. "), pl.col("number").cast(pl.String)]
    )  # fmt: skip
    description = pl.concat_str(
        [pl.col("adj"), pl.lit(" "), pl.col("noun").str.to_lowercase(), pl.lit(" "),
         pl.col("ptype").str.to_lowercase(), pl.lit(" from the "), pl.col("variant").str.to_lowercase(),
         pl.lit(" range. Gentle enough for every day.")]
    )  # fmt: skip
    return df.select(
        "asin",
        "family",
        "group",
        "ptype",
        "adj",
        "noun",
        pl.when(pl.col("has_title")).then(title).alias("title"),
        pl.when(pl.col("has_brand")).then(pl.col("brand")).alias("brand"),
        pl.when(pl.col("has_description")).then(description).alias("description"),
        pl.when(pl.col("has_price")).then(pl.col("price")).alias("price"),
    )


def _meta_lines(text: pl.DataFrame, category: str, image_prefix: str | None, seed: int) -> pl.Series:
    """One Python-literal dict per item, as in ``meta_<Category>.json.gz`` of the 2014 release."""
    rng = _rng(seed, 4)
    n = text.height
    cat_lit = repr(category)
    gift = rng.random(n) < 0.25  # a second category path (its first element repeats: dedup in ingest)
    rank = rng.integers(1, 500_000, n)
    df = text.with_columns(pl.Series("gift", gift), pl.Series("rank", rank))
    path = pl.concat_str(
        [pl.lit(f"[[{cat_lit}, "), _lit(pl.col("group")), pl.lit(", "), _lit(pl.col("ptype")), pl.lit("]")]
    )
    categories = path + pl.when(pl.col("gift")).then(pl.lit(f", [{cat_lit}, 'Gift Sets']]")).otherwise(
        pl.lit("]")
    )

    def optional(cond: pl.Expr, piece: pl.Expr) -> pl.Expr:
        return pl.when(cond).then(piece).otherwise(pl.lit(""))

    pieces = [
        pl.lit("{'asin': '") + pl.col("asin") + pl.lit("'"),
        optional(
            pl.col("description").is_not_null(), pl.lit(", 'description': ") + _lit(pl.col("description"))
        ),
        optional(pl.col("title").is_not_null(), pl.lit(", 'title': ") + _lit(pl.col("title"))),
        optional(pl.col("price").is_not_null(), pl.lit(", 'price': ") + pl.col("price").cast(pl.String)),
    ]
    if image_prefix is not None:
        pieces.append(pl.lit(f", 'imUrl': '{image_prefix}/") + pl.col("asin") + pl.lit(".png'"))
    pieces += [
        pl.lit(f", 'salesRank': {{{cat_lit}: ") + pl.col("rank").cast(pl.String) + pl.lit("}"),
        pl.lit(", 'categories': ") + categories,
        optional(pl.col("brand").is_not_null(), pl.lit(", 'brand': ") + _lit(pl.col("brand"))),
        pl.lit("}"),
    ]
    return df.select(pl.concat_str(pieces).alias("line")).get_column("line")


def _review_frame(inter: DemoInteractions, cat: DemoCatalogue, text: pl.DataFrame) -> pl.DataFrame:
    """The reviews as the 2014 JSON fields, sorted by asin then time (as the real files are grouped)."""
    item = pl.Series(inter.item)
    rating = inter.rating.astype(np.int64)
    noun = text.get_column("noun").gather(item).str.to_lowercase()
    ptype = text.get_column("ptype").gather(item).str.to_lowercase()
    df = pl.DataFrame(
        {
            "reviewerID": pl.Series(inter.user_id).gather(pl.Series(inter.user)),
            "asin": pl.Series(cat.asin).gather(item),
            "overall": rating.astype(np.float64),
            "unixReviewTime": inter.ts,
            "summary": np.asarray(SUMMARIES)[rating - 1],
            "verdict": np.asarray(VERDICTS)[rating - 1],
            "noun": noun,
            "ptype": ptype,
        }
    )
    return df.sort("asin", "unixReviewTime", "reviewerID").select(
        "reviewerID",
        "asin",
        "overall",
        "unixReviewTime",
        pl.from_epoch("unixReviewTime", time_unit="s").dt.strftime("%m %-d, %Y").alias("reviewTime"),
        "summary",
        pl.concat_str(
            [pl.lit("I use this "), pl.col("ptype"), pl.lit(" every day. The "), pl.col("noun"),
             pl.lit(" scent is "), pl.col("verdict"), pl.lit(".")]
        ).alias("reviewText"),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- images
def family_style(family: int) -> tuple[float, str]:
    """(hue in [0, 1), shape name) of a family: hues spread by the golden ratio, shapes in turn."""
    return (family * 0.6180339887) % 1.0, SHAPES[family % len(SHAPES)]


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    corners = {"triangle": (3, -90.0), "diamond": (4, 0.0), "hexagon": (6, 0.0)}
    if shape in corners:
        k, start = corners[shape]
        return [(cx + r * math.cos(math.radians(start + 360 * j / k)), cy + r * math.sin(math.radians(start + 360 * j / k)))
                for j in range(k)]  # fmt: skip
    if shape == "star":
        return [(cx + (r if j % 2 == 0 else r * 0.45) * math.cos(math.radians(-90 + 36 * j)),
                 cy + (r if j % 2 == 0 else r * 0.45) * math.sin(math.radians(-90 + 36 * j))) for j in range(10)]  # fmt: skip
    raise ValueError(shape)


def render_item_image(family: int, shade: float, size: int, jitter: tuple[float, float] = (0.0, 0.0)):  # noqa: ANN201
    """A small product picture: the family's shape in the family's colour on a light background.

    Args:
        family: family index (fixes hue and shape).
        shade: 0..1 position along the family order: darker and larger towards 1.
        size: image side in pixels.
        jitter: centre offset in fractions of the side.

    Returns:
        A PIL RGB image.
    """
    from PIL import Image, ImageDraw  # noqa: PLC0415 - only needed when writing images

    hue, shape = family_style(family)
    colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.95 - 0.45 * shade))
    img = Image.new("RGB", (size, size), (246, 244, 240))
    draw = ImageDraw.Draw(img)
    cx, cy = size * (0.5 + jitter[0]), size * (0.5 + jitter[1])
    r = size * (0.24 + 0.14 * shade)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))
    elif shape == "cross":
        w = r / 2.8
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=colour)
    return img


def write_images(cat: DemoCatalogue, images_dir: Path, size: int, seed: int = 0) -> None:
    """One PNG per item, ``images_dir/<asin>.png``."""
    rng = _rng(seed, 5)
    images_dir.mkdir(parents=True, exist_ok=True)
    jitter = rng.uniform(-0.06, 0.06, size=(cat.n_items, 2))
    shade = cat.position / np.maximum(cat.family_size[cat.family] - 1, 1)
    for j in progress_bar(range(cat.n_items), desc="demo images", unit=" img", mininterval=2.0, disable=None):
        img = render_item_image(
            int(cat.family[j]), float(shade[j]), size, (float(jitter[j, 0]), float(jitter[j, 1]))
        )
        img.save(images_dir / f"{cat.asin[j]}.png", format="PNG")


# --------------------------------------------------------------------------------------------- files
def _chunks(frame: pl.DataFrame, rows: int = 200_000) -> Iterator[pl.DataFrame]:
    for offset in range(0, frame.height, rows):
        yield frame.slice(offset, rows)


@contextlib.contextmanager
def _gzip_writer(path: Path) -> Iterator[gzip.GzipFile]:
    """A deterministic gzip stream (no file name, mtime 0)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as f,
    ):
        yield f


def write_demo_raw(
    demo: DemoParams,
    category: str,
    raw_dir: Path,
    image_prefix: str | None = None,
    reviews_format: Literal["json", "ratings_csv"] = "json",
    users: int | None = None,
) -> DemoFiles:
    """Generate the demo data set and write it in the Amazon 2014 formats under ``raw_dir``.

    Args:
        demo: generator params (``data.demo``).
        category: file-name category (``reviews_<category>_5.json.gz``, ``meta_<category>.json.gz``).
        raw_dir: output folder (created).
        image_prefix: what ``imUrl`` holds before ``/<asin>.png`` (e.g. ``data/processed/demo_raw/images``,
            relative to the project root); default ``raw_dir/images``. Unused when ``demo.images`` is off
            (no ``imUrl`` then).
        reviews_format: ``json`` (``reviews_<category>_5.json.gz``) or ``ratings_csv``
            (``ratings_<category>.csv``, the 2014 ratings-only format).
        users: overrides ``demo.users``.

    Returns:
        The paths written and the generated arrays.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    cat = generate_catalogue(demo)
    inter = generate_interactions(demo, cat, users)
    text = catalogue_text(cat, demo.seed)
    images_dir = raw_dir / "images" if demo.images else None
    if images_dir is not None:
        write_images(cat, images_dir, demo.image_size, demo.seed)
        prefix = image_prefix if image_prefix is not None else images_dir.as_posix()
    else:
        prefix = None

    meta_path = raw_dir / f"meta_{category}.json.gz"
    lines = _meta_lines(text, category, prefix, demo.seed)
    with _gzip_writer(meta_path) as f:
        for offset in range(0, lines.len(), 200_000):
            f.write(("\n".join(lines.slice(offset, 200_000).to_list()) + "\n").encode())

    reviews = _review_frame(inter, cat, text)
    if reviews_format == "json":
        reviews_path = raw_dir / f"reviews_{category}_5.json.gz"
        with _gzip_writer(reviews_path) as f:
            for chunk in _chunks(reviews):
                f.write(chunk.write_ndjson().encode())
    elif reviews_format == "ratings_csv":
        reviews_path = raw_dir / f"ratings_{category}.csv"
        reviews.select("reviewerID", "asin", "overall", "unixReviewTime").write_csv(
            reviews_path, include_header=False
        )
    else:
        raise ValueError(f"unknown reviews_format {reviews_format!r}")
    log.info(
        "demo data: %d items in %d families, %d users, %d reviews -> %s",
        cat.n_items, cat.n_families, inter.user_id.size, inter.item.size, raw_dir,
    )  # fmt: skip
    return DemoFiles(reviews_path, meta_path, images_dir, cat, inter)
