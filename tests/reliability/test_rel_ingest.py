"""Reliability of the ingest stage (issue 15, items 3, 5, 6 and 7): non-canonical ids, configured fields
missing from the records, damaged .gz files, out-of-range timestamps, deeply nested lines, and the raw-data
downloader's limits."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rel_servers import LoopbackServer

from pipeline.config import DataParams, MLflowParams
from pipeline.data.download import download_file
from pipeline.data.ingest import run_ingest
from pipeline.data.sources.amazon import AMAZON_FORMATS
from pipeline.data.sources.metadata import read_metadata
from pipeline.data.sources.reviews import read_json_reviews
from pipeline.errors import DataError

NO_MLFLOW = MLflowParams(enabled=False)
DEEP = (
    "[" * 100_000 + "]" * 100_000
)  # json.loads: RecursionError; ast.literal_eval: too many nested parentheses


def _sequences(tmp_path: Path, lines: list[str], **data: object) -> tuple[DataParams, Path]:
    seq = tmp_path / "seq.txt"
    seq.write_text("\n".join(lines) + "\n")
    items = tmp_path / "items.tsv"
    ids = sorted({t for line in lines for t in line.split()[1:]})
    items.write_text("item_id\ttitle\n" + "".join(f"{i}\ttitle {i}\n" for i in ids))
    params = {"source": "sequences", "sequences_file": str(seq), "items_file": str(items),
              "text_columns": ["title"], "image_column": None, "kcore": 1} | data  # fmt: skip
    return DataParams(**params), seq


def _good_lines(n: int) -> list[str]:
    return [f"{u} {u % 7 + 1} {u % 5 + 8} {u % 3 + 13}" for u in range(1, n + 1)]


# --------------------------------------------------------------------------------------------- 3. ids
@pytest.mark.parametrize("token", ["5.0", "05", "+5", "x7", "5e0"])
def test_non_canonical_ids_are_malformed_lines_naming_file_and_line(tmp_path: Path, token: str) -> None:
    lines = _good_lines(98)
    lines[9] = f"10 {token} 9 14"  # line 10
    lines[49] = f"50 8 {token}"  # line 50
    data, seq = _sequences(tmp_path, lines, max_bad_fraction=0.01)
    with pytest.raises(DataError) as err:
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    msg = str(err.value)
    assert f"{seq}: 2 of 98 records are malformed" in msg
    assert f"line 10: {token!r} is not an integer id" in msg and "line 50:" in msg
    assert not (tmp_path / "out").exists()


def test_non_canonical_ids_within_tolerance_are_skipped_not_renumbered(tmp_path: Path) -> None:
    """``5.0`` once made every id a string (sorted as text) and silently dropped 83 % of interactions."""
    lines = _good_lines(99) + ["100 5.0 6 7"]
    data, _ = _sequences(tmp_path, lines, max_bad_fraction=0.05)
    stats = run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert stats["malformed"] == {"seq.txt": 1} and stats["interactions"] == 99 * 3
    items = pq.read_table(tmp_path / "out" / "items.parquet").column("item_id").to_pylist()
    assert items == [str(i) for i in range(1, 16)]  # numeric order: item 1 stays 1, "10" after "9"


# --------------------------------------------------------------------------------------------- 5. fields
def _amazon_2014(tmp_path: Path, meta_lines: list[str]) -> Path:
    raw = tmp_path / "raw" / "amazon2014"
    raw.mkdir(parents=True)
    reviews = [json.dumps({"reviewerID": f"U{u}", "asin": f"B{i}", "unixReviewTime": 10 * u + i})
               for u in range(4) for i in range(4)]  # fmt: skip
    (raw / "reviews_Cat_5.json.gz").write_bytes(gzip.compress(("\n".join(reviews) + "\n").encode()))
    (raw / "meta_Cat.json.gz").write_bytes(gzip.compress(("\n".join(meta_lines) + "\n").encode()))
    return raw


def _meta(i: int, **fields: object) -> str:
    return repr({"asin": f"B{i}", **fields})


def test_text_column_in_no_record_fails(tmp_path: Path) -> None:
    _amazon_2014(tmp_path, [_meta(i, title=f"T{i}", imUrl=f"u{i}") for i in range(4)])
    data = DataParams(source="amazon2014", category="Cat", raw_dir=str(tmp_path / "raw"), kcore=2,
                      text_columns=["title", "titel"])  # fmt: skip
    with pytest.raises(DataError, match=r"meta_Cat\.json\.gz: data\.text_columns field\(s\) \['titel'\] are in "
                                        r"none of its 4 records"):  # fmt: skip
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")


def test_image_column_in_no_record_fails(tmp_path: Path) -> None:
    _amazon_2014(tmp_path, [_meta(i, title=f"T{i}") for i in range(4)])
    data = DataParams(source="amazon2014", category="Cat", raw_dir=str(tmp_path / "raw"), kcore=2,
                      text_columns=["title"], image_column="imageURL")  # fmt: skip
    with pytest.raises(DataError) as err:
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert "data.image_column 'imageURL' or 'imUrl' is in none of its 4 records" in str(err.value)
    assert "data.image_column: null" in str(err.value)
    # the same data without images configured is fine
    ok = data.model_copy(update={"image_column": None})
    assert run_ingest(ok, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")["items"] == 4


def test_field_in_few_records_warns_with_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    meta = [_meta(i, title=f"T{i}", imUrl=f"u{i}") for i in range(4)]
    meta += [_meta(i, title=f"T{i}", imUrl=f"u{i}") for i in range(4, 40)]  # unreviewed items
    meta[0] = _meta(0, title="T0", imUrl="u0", brand="Acme")
    _amazon_2014(tmp_path, meta)
    data = DataParams(source="amazon2014", category="Cat", raw_dir=str(tmp_path / "raw"), kcore=2,
                      text_columns=["title", "brand"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pipeline.data.records"):
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert "data.text_columns field 'brand' is in only 1 of 40 records (2.5%)" in caplog.text


def test_item_table_text_or_image_column_empty_everywhere_fails(tmp_path: Path) -> None:
    data, _ = _sequences(tmp_path, _good_lines(20), image_column="img")
    with pytest.raises(DataError, match=r"items\.tsv: data\.image_column 'img' is in none of its 15 records"):
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    (tmp_path / "items.tsv").write_text(
        "item_id\ttitle\tbrand\n" + "".join(f"{i}\tt{i}\t\n" for i in range(1, 16))
    )
    data = data.model_copy(update={"image_column": None, "text_columns": ["title", "brand"]})
    with pytest.raises(DataError, match=r"field\(s\) \['brand'\] are in none of its 15 records"):
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")


# --------------------------------------------------------------------------------------------- 6. damaged input
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("which", ["reviews", "meta"])
def test_truncated_or_corrupt_gz_is_a_data_error_naming_the_file(
    tmp_path: Path, damage: str, which: str
) -> None:
    raw = _amazon_2014(tmp_path, [_meta(i, title=f"T{i}", imUrl=f"u{i}") for i in range(4)])
    path = raw / ("reviews_Cat_5.json.gz" if which == "reviews" else "meta_Cat.json.gz")
    lines = [
        json.dumps({"reviewerID": f"U{k % 9}", "asin": f"B{k % 4}", "unixReviewTime": k}) for k in range(3000)
    ]
    if which == "meta":
        lines = [_meta(i, title=f"T{i} " + "x" * 50, imUrl=f"u{i}") for i in range(3000)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    path.write_bytes(
        blob[: len(blob) // 2] if damage == "truncated" else blob[:200] + b"\xff" * 64 + blob[264:]
    )
    data = DataParams(source="amazon2014", category="Cat", raw_dir=str(tmp_path / "raw"), kcore=2)
    with pytest.raises(DataError) as err:
        run_ingest(data, NO_MLFLOW, tmp_path / "out", tmp_path / "stats.json")
    assert f"{path}: truncated or corrupt gzip file after line" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_out_of_range_timestamp_is_a_malformed_line(tmp_path: Path) -> None:
    lines = [json.dumps({"reviewerID": f"U{k}", "asin": "B1", "unixReviewTime": k}) for k in range(5)]
    lines[2] = '{"reviewerID": "U2", "asin": "B1", "unixReviewTime": 99999999999999999999}'
    lines[3] = '{"reviewerID": "U3", "asin": "B1", "unixReviewTime": -9999999999999999999}'
    path = tmp_path / "r.json"
    path.write_text("\n".join(lines) + "\n")
    df, report = read_json_reviews(path, "reviewerID", "asin", "unixReviewTime")
    assert df.get_column("user_id").to_list() == ["U0", "U1", "U4"]
    assert [n for n, _ in report.examples] == [3, 4] and report.malformed == 2
    assert "'unixReviewTime' is out of range: 99999999999999999999" in report.examples[0][1]
    csv = tmp_path / "ratings.csv"
    csv.write_text("U1,B1,5.0,1\nU2,B1,4.0,123456789012345678901234\n")
    from pipeline.data.sources.reviews import read_ratings_csv

    df, report = read_ratings_csv(csv)
    assert df.height == 1 and report.examples[0][0] == 2 and "out of range" in report.examples[0][1]


def test_deeply_nested_json_line_is_a_malformed_line(tmp_path: Path) -> None:
    good = [json.dumps({"reviewerID": f"U{k}", "asin": "B1", "unixReviewTime": k}) for k in range(4)]
    reviews = tmp_path / "r.json"
    reviews.write_text("\n".join([good[0], DEEP, good[1], '{"reviewerID": "U9", "asin": "B1", "x": ' + DEEP + "}",
                                  *good[2:]]) + "\n")  # fmt: skip
    df, report = read_json_reviews(reviews, "reviewerID", "asin", "unixReviewTime")
    assert df.height == 4 and [n for n, _ in report.examples] == [2, 4]
    assert all("nested too deeply" in why or "neither" in why for _, why in report.examples)
    for literal, name in ((True, "meta_2014.json"), (False, "meta_2018.json")):
        meta = tmp_path / name
        meta.write_text("\n".join(['{"asin": "B1", "title": "One"}', DEEP, '{"asin": "B2", "title": ' + DEEP + "}",
                                   '{"asin": "B3", "title": "Three"}']) + "\n")  # fmt: skip
        items, report, _ = read_metadata(meta, "asin", ["title"], [], literal)
        assert items.get_column("item_id").to_list() == ["B1", "B3"], name
        assert [n for n, _ in report.examples] == [2, 3], name


# --------------------------------------------------------------------------------------------- 7. downloader
@pytest.fixture
def file_server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer(big_size=5000)
    srv.files["/big.bin"] = b"b" * 5000
    yield srv
    srv.close()


def test_raw_download_over_the_size_cap_is_refused(tmp_path: Path, file_server: LoopbackServer) -> None:
    for route in ("/big.bin", "/unsized"):  # announced by Content-Length / only seen while streaming
        dest = tmp_path / route.strip("/")
        with pytest.raises(DataError, match=r"more than the limit of 1000 bytes \(download limit\)"):
            download_file(f"{file_server.url}{route}", dest, retries=2, backoff_s=0.0, max_bytes=1000)
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
        assert file_server.hits[route] == 1  # not retried
    ok = download_file(f"{file_server.url}/big.bin", tmp_path / "ok.bin", max_bytes=5000)
    assert ok.read_bytes() == b"b" * 5000


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x.gz", "file:///etc/hostname"])
def test_raw_download_redirect_to_another_scheme_is_refused(
    tmp_path: Path, file_server: LoopbackServer, target: str
) -> None:
    with pytest.raises(
        DataError,
        match=r"HTTP 302 .*(redirect from http to ftp .* refused|file:///etc/hostname' is not allowed)",
    ):
        download_file(f"{file_server.url}/redirect?to={target}", tmp_path / "x.gz", retries=0)
    assert not (tmp_path / "x.gz").exists()


def test_official_raw_data_urls_use_https() -> None:
    for fmt in AMAZON_FORMATS.values():
        assert fmt.review_url.startswith("https://") and fmt.meta_url.startswith("https://"), fmt.name


def test_oversized_python_literal_metadata_line_is_refused_before_parsing(tmp_path: Path) -> None:
    """A small .gz of a huge tuple literal (a 2014 record's field) drove ast.literal_eval to gigabytes; a
    line over MAX_LITERAL_CHARS is a malformed line, named with its size and the limit (issue 23)."""
    from pipeline.data.sources.metadata import MAX_LITERAL_CHARS

    huge = "{'asin': 'B2', 'title': 'Two', 'x': (" + "0," * (MAX_LITERAL_CHARS // 2 + 10) + ")}"
    meta = tmp_path / "meta_Beauty.json.gz"
    with gzip.open(meta, "wt") as f:
        f.write(
            "\n".join(["{'asin': 'B1', 'title': 'One'}", huge, "{'asin': 'B3', 'title': 'Three'}"]) + "\n"
        )
    assert meta.stat().st_size < 5000
    items, report, _ = read_metadata(meta, "asin", ["title"], [], python_literal=True)
    assert items.get_column("item_id").to_list() == ["B1", "B3"]
    ((line, why),) = report.examples
    assert line == 2 and f"a Python-literal record of {len(huge):,} characters, over the 262,144" in why
