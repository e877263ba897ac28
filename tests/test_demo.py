"""The demo generator: deterministic, real 2014 formats, and families visible in titles, images and sequences."""

from __future__ import annotations

import ast
import colorsys
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DemoParams
from pipeline.data.sources.demo import write_demo_raw
from pipeline.data.sources.demo.catalogue import generate_catalogue, generate_interactions
from pipeline.data.sources.demo.images import family_style, render_item_image
from pipeline.data.sources.demo.text import (
    ADJECTIVES,
    BRANDS,
    NOUNS,
    PRODUCT_TYPES,
    VARIANTS,
    catalogue_text,
)

DEMO = DemoParams(seed=3, users=400, items=150, families=6, image_size=16)


def read_gz_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_generator_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = write_demo_raw(DEMO, "Beauty", tmp_path / "a", image_prefix="img")
    b = write_demo_raw(DEMO, "Beauty", tmp_path / "b", image_prefix="img")
    for name in ("reviews_Beauty_5.json.gz", "meta_Beauty.json.gz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    pngs = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(pngs) == DEMO.items
    assert all(
        (tmp_path / "a/images" / p).read_bytes() == (tmp_path / "b/images" / p).read_bytes()
        for p in pngs[:20]
    )
    np.testing.assert_array_equal(a.interactions.item, b.interactions.item)
    other = generate_interactions(
        DemoParams(seed=4, users=400, items=150, families=6), generate_catalogue(DEMO)
    )
    assert not np.array_equal(other.item[:200], a.interactions.item[:200])
    # more users keep the same catalogue (separate random streams)
    bigger = DemoParams(seed=3, users=800, items=150, families=6)
    np.testing.assert_array_equal(generate_catalogue(bigger).asin, a.catalogue.asin)


def test_raw_files_follow_the_2014_formats(tmp_path: Path) -> None:
    files = write_demo_raw(DEMO, "Beauty", tmp_path, image_prefix="data/processed/demo_raw/images")
    reviews = [json.loads(line) for line in read_gz_lines(files.reviews)]  # strict JSON lines
    assert list(reviews[0]) == [
        "reviewerID",
        "asin",
        "overall",
        "unixReviewTime",
        "reviewTime",
        "summary",
        "reviewText",
    ]
    assert len(reviews) == files.interactions.item.size
    assert all(len(r["asin"]) == 10 and r["asin"][0] == "B" and len(r["reviewerID"]) == 13 for r in reviews)

    lines = read_gz_lines(files.meta)
    metas = [ast.literal_eval(line) for line in lines]  # Python literals, one per line
    assert len(metas) == DEMO.items
    not_json = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json += 1
    assert not_json == len(lines)  # single-quoted like the real files
    assert any('"' in line for line in lines)  # apostrophes force double-quoted literals somewhere
    assert all(m["imUrl"] == f"data/processed/demo_raw/images/{m['asin']}.png" for m in metas)
    assert all(isinstance(m["categories"], list) and isinstance(m["categories"][0], list) for m in metas)
    # wrinkles: HTML entities, missing brand / description / title
    assert any("&amp;" in m.get("title", "") for m in metas)
    assert 0 < sum("brand" not in m for m in metas) < DEMO.items // 4
    assert 0 < sum("description" not in m for m in metas) < DEMO.items // 2
    assert sum("title" not in m for m in metas) < DEMO.items // 10
    # the vocabulary never needs escaping in a literal
    for word in (*ADJECTIVES, *NOUNS, *VARIANTS, *BRANDS, *(t for pair in PRODUCT_TYPES for t in pair)):
        assert '"' not in word and "\\" not in word


def test_titles_of_a_family_share_words() -> None:
    cat = generate_catalogue(DEMO)
    text = catalogue_text(cat, DEMO.seed)
    titles = text.get_column("title").to_list()
    by_family: dict[int, list[set[str]]] = {}
    for fam, title in zip(cat.family.tolist(), titles, strict=True):
        if title is not None:
            by_family.setdefault(fam, []).append(set(title.replace("&amp;", "").split()))
    shared = {fam: set.intersection(*words) - {"-", "No."} for fam, words in by_family.items()}
    assert all(len(words) >= 3 for words in shared.values())  # adjective, noun and product-type words
    fams = sorted(shared)
    for f in fams:
        for g in fams:
            if f != g:
                assert shared[f] != shared[g]


def test_images_show_the_family_colour_and_shape() -> None:
    def hue_of(img) -> float:
        px = np.asarray(img, dtype=np.float64) / 255.0
        fg = px[(np.abs(px - np.array([246, 244, 240]) / 255.0).sum(-1) > 0.15)]
        return colorsys.rgb_to_hsv(*fg.mean(axis=0))[0]

    hue, shape = family_style(2)
    light, dark = render_item_image(2, 0.0, 32), render_item_image(2, 1.0, 32)
    assert hue_of(light) == pytest.approx(hue, abs=0.02) and hue_of(dark) == pytest.approx(hue, abs=0.02)
    assert np.asarray(dark).mean() < np.asarray(light).mean()  # darker/larger along the family order
    assert family_style(2)[1] != family_style(3)[1] and abs(family_style(2)[0] - family_style(3)[0]) > 0.1


def test_sequences_mostly_stay_within_a_family_and_popularity_is_skewed() -> None:
    cat = generate_catalogue(DEMO)
    inter = generate_interactions(DEMO, cat)
    same_user = inter.user[1:] == inter.user[:-1]
    fam = cat.family
    same_family = (fam[inter.item[1:]] == fam[inter.item[:-1]])[same_user]
    assert same_family.mean() > 0.75
    # next item near the previous one in the family order (1-3 steps ahead, with wrap-around)
    steps = (cat.position[inter.item[1:]] - cat.position[inter.item[:-1]]) % cat.family_size[
        fam[inter.item[1:]]
    ]
    assert np.isin(steps[same_user & (fam[inter.item[1:]] == fam[inter.item[:-1]])], [1, 2, 3]).mean() > 0.8
    # timestamps increase within a user's walk (repeated reviews aside)
    assert (np.diff(inter.ts)[same_user] >= 0).all()
    lengths = np.bincount(inter.user)
    assert lengths.min() >= DEMO.min_len and lengths.max() <= DEMO.max_len + 3
    counts = np.sort(np.bincount(inter.item, minlength=DEMO.items))[::-1]
    assert counts[: DEMO.items // 10].sum() > 0.2 * counts.sum()  # top 10% of items: > 20% of interactions


def test_large_catalogue_is_vectorised() -> None:
    big = DemoParams(items=200_000, families=4000, users=10, images=False)
    cat = generate_catalogue(big)
    assert len(np.unique(cat.asin)) == 200_000
    assert catalogue_text(cat).height == 200_000
