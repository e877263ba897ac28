"""The demo's raw text: titles, brands and categories of each family's items, the 2014 metadata lines and the
reviews, with the wrinkles of the real files (HTML entities, apostrophes, missing fields)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.data.sources.demo.catalogue import DemoCatalogue, DemoInteractions, rng_stream

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
SUMMARIES = ("Not for me", "Disappointing", "It's okay", "Really nice", "Love it!")
VERDICTS = ("awful", "weak", "fine", "lovely", "amazing")


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
    rng = rng_stream(seed, 3)
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


def meta_lines(text: pl.DataFrame, category: str, image_prefix: str | None, seed: int) -> pl.Series:
    """One Python-literal dict per item, as in ``meta_<Category>.json.gz`` of the 2014 release."""
    rng = rng_stream(seed, 4)
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


def review_frame(inter: DemoInteractions, cat: DemoCatalogue, text: pl.DataFrame) -> pl.DataFrame:
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
