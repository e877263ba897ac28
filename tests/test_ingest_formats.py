"""Parsers of every raw format, on tiny inline samples with known answers."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from pipeline.config import DataParams, MLflowParams
from pipeline.data.ingest import run_ingest
from pipeline.data.records import FieldCounts
from pipeline.data.sources.amazon import AMAZON_FORMATS
from pipeline.data.sources.metadata import parse_metadata_line, read_metadata
from pipeline.data.sources.reviews import read_json_reviews, read_ratings_csv
from pipeline.data.sources.sequences import read_item_table, read_sequences_file
from pipeline.data.text import assemble_text, image_reference, item_attributes
from pipeline.errors import DataError

NO_MLFLOW = MLflowParams(enabled=False)


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def rows(df) -> list[tuple]:
    return list(df.select("user_id", "item_id", "ts").iter_rows())


# --------------------------------------------------------------------------------------------- text helpers
def test_assemble_text_flattens_unescapes_dedupes_and_normalises() -> None:
    record = {
        "title": "Rose &amp; Honey   Lip\tBalm ",
        "brand": "Nature's Glow",
        "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Gift Sets"]],
        "description": ["Soft.", "", "Soft."],
    }
    assert assemble_text(record, ["title", "brand", "categories", "description", "absent"]) == (
        "Rose & Honey Lip Balm | Nature's Glow | Beauty | Makeup | Lips | Gift Sets | Soft."
    )
    # aliases: 2018 "category", 2023 "store" and "features" stand in for categories / brand / feature
    assert assemble_text(
        {"category": ["A", "B"], "store": "S", "features": ["f1"]}, ["categories", "brand", "feature"]
    ) == ("A | B | S | f1")
    assert assemble_text({}, ["title"]) == ""


def test_item_attributes_name_each_piece_after_its_field() -> None:
    record = {
        "brand": " OPI ",
        "store": "ignored",
        "categories": [["Beauty", "Nails"], ["Beauty &amp; Care"]],
    }
    assert item_attributes(record, {"brand": None, "categories": None}) == [
        "brand=OPI", "categories=Beauty", "categories=Nails", "categories=Beauty & Care"
    ]  # fmt: skip
    # a string is cut at its field's separator (None: kept whole); empty and repeated pieces are dropped
    row = {"tags": "Makeup | Nails || Makeup", "maker": "Co., Inc."}
    assert item_attributes(row, {"tags": "|", "maker": None}) == [
        "tags=Makeup",
        "tags=Nails",
        "maker=Co., Inc.",
    ]
    # aliases as for text (2023 "store" for brand), under the configured name; absent fields give nothing
    assert item_attributes({"store": "S"}, {"brand": None, "absent": ","}) == ["brand=S"]
    assert item_attributes({}, {}) == []


def test_image_reference_takes_the_first_usable_entry() -> None:
    assert image_reference(" http://x/a.jpg ") == "http://x/a.jpg"
    assert image_reference(["", "http://x/1.jpg", "http://x/2.jpg"]) == "http://x/1.jpg"
    images_2023 = [{"thumb": "t.jpg", "large": "l.jpg", "hi_res": None}, {"large": "l2.jpg"}]
    assert image_reference(images_2023) == "l.jpg"
    assert image_reference([{"thumb": "t.jpg", "hi_res": "h.jpg"}]) == "h.jpg"
    assert image_reference([]) is None
    assert image_reference(None) is None


def test_python_literal_metadata_is_never_evaluated() -> None:
    # single quotes, a double-quoted string holding an apostrophe, and a bool: not JSON
    line = """{'asin': 'B1', 'title': "Burt's Bees", 'flag': True, 'categories': [['Beauty']]}"""
    with pytest.raises(ValueError):
        json.loads(line)
    assert parse_metadata_line(line, python_literal=True) == {
        "asin": "B1", "title": "Burt's Bees", "flag": True, "categories": [["Beauty"]]
    }  # fmt: skip
    assert parse_metadata_line("{'asin': 'B2', 'price': 1.5}", python_literal=True) == {
        "asin": "B2",
        "price": 1.5,
    }
    with pytest.raises(ValueError, match="neither JSON nor a Python literal"):
        parse_metadata_line("__import__('os').system('echo pwned')", python_literal=True)
    with pytest.raises(ValueError):
        parse_metadata_line("{'asin': 'B1'}", python_literal=False)  # strict JSON for 2018/2023


# --------------------------------------------------------------------------------------------- 2014
def test_amazon2014_reviews_json_and_literal_metadata(tmp_path: Path) -> None:
    reviews = write_lines(
        tmp_path / "reviews_Beauty_5.json.gz",
        [
            json.dumps({"reviewerID": "U2", "asin": "B1", "overall": 5.0, "unixReviewTime": 300,
                        "reviewTime": "01 1, 1970", "summary": "ok", "reviewText": "fine"}),
            json.dumps({"reviewerID": "U1", "asin": "B2", "overall": 4.0, "unixReviewTime": 100}),
        ],
    )  # fmt: skip
    df, report = read_json_reviews(reviews, "reviewerID", "asin", "unixReviewTime")
    assert rows(df) == [("U2", "B1", 300), ("U1", "B2", 100)]
    assert (report.records, report.malformed) == (2, 0)

    meta = write_lines(
        tmp_path / "meta_Beauty.json.gz",
        [
            "{'asin': 'B1', 'title': 'Rose &amp; Honey Balm', 'imUrl': 'http://img/B1.jpg', "
            "'categories': [['Beauty', 'Makeup'], ['Beauty']], 'brand': 'Lumiere'}",
            """{'asin': 'B2', 'title': "Nature's Glow Serum", 'related': {'also_bought': ['B1']}, 'x': None}""",
            "{'asin': 'B1', 'title': 'a repeated id: first record wins'}",
        ],
    )
    counts = FieldCounts(meta)
    items, meta_report, duplicates = read_metadata(
        meta,
        "asin",
        ["title", "brand", "categories"],
        ["imUrl"],
        True,
        counts,
        {"brand": None, "categories": None},
    )
    assert items.rows() == [
        ("B1", "Rose & Honey Balm | Lumiere | Beauty | Makeup", "http://img/B1.jpg",
         ["brand=Lumiere", "categories=Beauty", "categories=Makeup"]),
        ("B2", "Nature's Glow Serum", None, []),
    ]  # fmt: skip
    assert (meta_report.records, meta_report.malformed, duplicates) == (3, 0, 1)
    assert counts.attributes == {"brand": 1, "categories": 1}
    counts.check(["title"], None, [], ["brand", "categories"])  # in 1 of 2 records: a warning only
    counts.attributes["brand"] = 0
    with pytest.raises(
        DataError, match=r"data.attribute_columns field\(s\) \['brand'\] are in none of its 2"
    ):
        counts.check(["title"], None, [], ["brand", "categories"])


def test_amazon2014_ratings_csv(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "ratings_Beauty.csv", ["A1,0000031887,5.0,1383523200", "A2,B9,3,1383523100", ""]
    )
    df, report = read_ratings_csv(path)
    assert rows(df) == [("A1", "0000031887", 1383523200), ("A2", "B9", 1383523100)]
    assert (report.records, report.malformed) == (2, 0)


def test_ratings_csv_bad_rows_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "ratings_X.csv", ["A1,B1,5.0,10", "A2,B2,five,11", "A3,B3,4.0", "A4,B4,1.0,13"]
    )
    df, report = read_ratings_csv(path)
    assert rows(df) == [("A1", "B1", 10), ("A4", "B4", 13)]
    assert report.malformed == 2
    assert [n for n, _ in report.examples] == [2, 3]
    assert "expected 4 fields" in report.examples[1][1]


# --------------------------------------------------------------------------------------------- 2018
def test_amazon2018_reviews_and_metadata(tmp_path: Path) -> None:
    fmt = AMAZON_FORMATS["amazon2018"]
    reviews = write_lines(
        tmp_path / "Luxury_Beauty_5.json.gz",
        [
            json.dumps({"overall": 5.0, "verified": True, "reviewTime": "01 5, 2018", "reviewerID": "R1",
                        "asin": "X1", "style": {"Size:": " 1 oz"}, "unixReviewTime": 1515110400}),
            json.dumps({"reviewerID": "R1", "asin": "X2", "unixReviewTime": 1515110401, "vote": "2"}),
        ],
    )  # fmt: skip
    df, _ = read_json_reviews(reviews, fmt.user_key, fmt.item_key, fmt.time_key)
    assert rows(df) == [("R1", "X1", 1515110400), ("R1", "X2", 1515110401)]
    meta = write_lines(
        tmp_path / "meta_Luxury_Beauty.json.gz",
        [
            json.dumps({"asin": "X1", "title": "Cream", "brand": "B", "category": ["Luxury Beauty", "Skin"],
                        "image": ["https://m.media-amazon.com/1.jpg", "https://m.media-amazon.com/2.jpg"]}),
            json.dumps({"asin": "X2", "title": "Oil", "description": ["Light &amp; dry.", "Vegan."], "image": []}),
        ],
    )  # fmt: skip
    items, report, _ = read_metadata(
        meta, "asin", ["title", "brand", "categories", "description"], ["imUrl", "image"], False,
        attribute_columns={"categories": None},
    )  # fmt: skip
    assert items.rows() == [
        ("X1", "Cream | B | Luxury Beauty | Skin", "https://m.media-amazon.com/1.jpg",
         ["categories=Luxury Beauty", "categories=Skin"]),  # 2018's "category", named as configured
        ("X2", "Oil | Light & dry. | Vegan.", None, []),
    ]  # fmt: skip
    assert report.malformed == 0


# --------------------------------------------------------------------------------------------- 2023
def test_amazon2023_jsonl_reviews_and_metadata(tmp_path: Path) -> None:
    fmt = AMAZON_FORMATS["amazon2023"]
    reviews = write_lines(
        tmp_path / "All_Beauty.jsonl",  # uncompressed .jsonl is accepted too
        [
            json.dumps({"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": "C1V",
                        "parent_asin": "C1", "user_id": "AG1", "timestamp": 1588687728923, "helpful_vote": 0}),
            json.dumps({"rating": 4.0, "asin": "C2", "parent_asin": "C2", "user_id": "AG1", "timestamp": 1588615855070}),
        ],
    )  # fmt: skip
    df, _ = read_json_reviews(reviews, fmt.user_key, fmt.item_key, fmt.time_key)
    assert rows(df) == [("AG1", "C1", 1588687728923), ("AG1", "C2", 1588615855070)]
    meta = write_lines(
        tmp_path / "meta_All_Beauty.jsonl.gz",
        [
            json.dumps({"main_category": "All Beauty", "title": "Serum", "features": ["Hydrating"],
                        "description": [], "categories": [], "store": "Glow Co",
                        "images": [{"thumb": "t1.jpg", "large": "l1.jpg", "variant": "MAIN", "hi_res": "h1.jpg"}],
                        "parent_asin": "C1"}),
            json.dumps({"title": "Mask", "store": None, "images": [{"thumb": "t2.jpg", "hi_res": "h2.jpg"}],
                        "parent_asin": "C2"}),
        ],
    )  # fmt: skip
    items, _, _ = read_metadata(
        meta, fmt.meta_item_key, ["title", "brand", "features"], ["imUrl", "images"], False,
        attribute_columns={"brand": None},
    )  # fmt: skip
    assert items.rows() == [
        ("C1", "Serum | Glow Co | Hydrating", "l1.jpg", ["brand=Glow Co"]),  # 2023's "store"
        ("C2", "Mask", "h2.jpg", []),
    ]


# --------------------------------------------------------------------------------------------- sequences
def test_sequences_file_and_item_tables(tmp_path: Path) -> None:
    seq = write_lines(tmp_path / "seq.txt", ["1 3 1 2", "", "2 2 3", "3"])
    df, report = read_sequences_file(seq)
    assert rows(df) == [("1", "3", 0), ("1", "1", 1), ("1", "2", 2), ("2", "2", 3), ("2", "3", 4)]
    assert (report.records, report.malformed, report.examples) == (3, 1, [(4, "a user id with no items")])

    tsv = tmp_path / "items.tsv"
    tsv.write_text("item_id\tname\tattrs\n1\tnail &amp; lacquer\tOPI | Makeup\n2\t\tUnknown\n2\tdup\tdup\n")
    items, duplicates = read_item_table(
        tsv, "item_id", ["name", "attrs"], "imUrl", attribute_columns={"attrs": "|"}
    )  # no imUrl column: ignored
    assert items.rows() == [
        ("1", "nail & lacquer | OPI | Makeup", None, ["attrs=OPI", "attrs=Makeup"]),
        ("2", "Unknown", None, ["attrs=Unknown"]),
    ]
    assert duplicates == 1

    csv_path = tmp_path / "items.csv"
    csv_path.write_text('id,title,img\n7,"Cream, rich",http://x/7.jpg\n8,Soap,\n')
    items, _ = read_item_table(csv_path, "id", ["title"], "img")
    assert items.rows() == [("7", "Cream, rich", "http://x/7.jpg", []), ("8", "Soap", None, [])]
    with pytest.raises(DataError, match=r"column\(s\) \['nope'\] not found.*has: \['id', 'title', 'img'\]"):
        read_item_table(csv_path, "id", ["nope"], None)
    with pytest.raises(DataError, match=r"\['brand'\] not found \(.*data.attribute_columns\)"):
        read_item_table(csv_path, "id", ["title"], None, attribute_columns={"brand": None})


# --------------------------------------------------------------------------------------------- bad input
def test_malformed_json_lines_are_skipped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [json.dumps({"reviewerID": f"U{k}", "asin": "B1", "unixReviewTime": k}) for k in range(6)]
    lines = good[:2] + ["{not json"] + good[2:4] + [json.dumps({"reviewerID": "U9", "unixReviewTime": 1})]
    wrong_type = json.dumps({"reviewerID": "U8", "asin": "B1", "unixReviewTime": "yesterday"})
    lines += [wrong_type, "[1, 2]", *good[4:]]
    path = write_lines(tmp_path / "reviews_X_5.json.gz", lines)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.records"):
        df, report = read_json_reviews(path, "reviewerID", "asin", "unixReviewTime")
    assert df.get_column("user_id").to_list() == [f"U{k}" for k in range(6)]
    assert df.get_column("line").to_list() == [1, 2, 4, 5, 9, 10]  # original line numbers: file order
    assert (report.records, report.malformed) == (10, 4)
    assert [n for n, _ in report.examples] == [3, 6, 7, 8]
    assert report.examples[1][1] == "missing field 'asin'"
    assert "must be an integer" in report.examples[2][1]
    assert "not a JSON object" in report.examples[3][1]
    assert f"{path}:3: skipped malformed record" in caplog.text
    with pytest.raises(DataError, match=r"reviews_X_5\.json\.gz: 4 of 10 records are malformed.*line 3"):
        report.check(0.2)
    report.check(0.5)  # within tolerance: no error


def test_only_the_first_five_bad_lines_are_reported(tmp_path: Path) -> None:
    lines = ["oops"] * 8 + [json.dumps({"reviewerID": "U", "asin": "B", "unixReviewTime": 1})] * 2
    _, report = read_json_reviews(
        write_lines(tmp_path / "r.json", lines), "reviewerID", "asin", "unixReviewTime"
    )
    assert report.malformed == 8 and len(report.examples) == 5
    assert report.summary().endswith("(and 3 more)")


# --------------------------------------------------------------------------------------------- end to end
def _review(user: str, item: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "user_id": user,
                       "parent_asin": item, "timestamp": t})  # fmt: skip


@pytest.mark.parametrize(
    ("source", "reviews_name", "meta_name", "meta_line"),
    [
        ("amazon2014", "reviews_Cat_5.json.gz", "meta_Cat.json.gz", "{{'asin': '{i}', 'title': 'T{i}', 'imUrl': 'u{i}'}}"),
        ("amazon2018", "Cat_5.json.gz", "meta_Cat.json.gz", '{{"asin": "{i}", "title": "T{i}", "image": ["u{i}"]}}'),
        ("amazon2023", "Cat.jsonl", "meta_Cat.jsonl.gz", '{{"parent_asin": "{i}", "title": "T{i}", "images": [{{"large": "u{i}"}}]}}'),
    ],
)  # fmt: skip
def test_run_ingest_on_each_amazon_release(
    tmp_path: Path, source: str, reviews_name: str, meta_name: str, meta_line: str
) -> None:
    raw = tmp_path / "raw" / source
    # 3 users x 3 items, all (user, item) pairs; user U3's times tie and fall back to file order
    events = [("U1", "I1", 1), ("U1", "I2", 2), ("U1", "I3", 3), ("U2", "I3", 1), ("U2", "I1", 2), ("U2", "I2", 3),
              ("U3", "I2", 5), ("U3", "I3", 5), ("U3", "I1", 5)]  # fmt: skip
    write_lines(raw / reviews_name, [_review(*e) for e in events])
    write_lines(raw / meta_name, [meta_line.format(i=i) for i in ("I1", "I2")])  # I3 has no metadata
    data = DataParams(
        source=source, category="Cat", raw_dir=str(tmp_path / "raw"), kcore=3, text_columns=["title"]
    )
    stats = run_ingest(data, NO_MLFLOW, tmp_path / "processed", tmp_path / "stats.json")
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 3, 9)
    assert stats["metadata"]["items_without_metadata"] == 1
    assert stats["metadata"]["interactions_without_metadata"] == 3
    import pyarrow.parquet as pq

    items = pq.read_table(tmp_path / "processed" / "items.parquet").to_pylist()
    assert items == [
        {"item": 1, "item_id": "I1", "text": "TI1", "image": "uI1", "attributes": []},
        {"item": 2, "item_id": "I2", "text": "TI2", "image": "uI2", "attributes": []},
        {"item": 3, "item_id": "I3", "text": "", "image": None, "attributes": []},
    ]
    seqs = pq.read_table(tmp_path / "processed" / "sequences.parquet").to_pylist()
    assert [s["items"] for s in seqs] == [[1, 2, 3], [3, 1, 2], [2, 3, 1]]
