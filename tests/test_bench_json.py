"""The scale benchmarks' ``--json`` files (issue 26): bench_evaluate on a generated catalogue and
bench_recommend with one index, each run small in a subprocess as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT

BENCH = PROJECT_ROOT / "benchmarks"


def _run(script: str, *args: str) -> None:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True, cwd=PROJECT_ROOT, env=env)


def test_bench_evaluate_json_on_a_generated_catalogue(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "evaluate.json"
    _run("bench_evaluate.py", "--items", "15", "--users", "40", "--repeats", "1", "--mask-history", "on",
         "--threads", "1", "--batch-size", "16", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["items"], result["users"], result["cases"], result["threads"]) == (15, 40, 40, 1)
    assert list(result["runs"]) == ["mask_history"]  # --mask-history on: the masked run alone
    run = result["runs"]["mask_history"]
    # 15 items: every target ranks within the top 20, whatever the random model scores
    assert run["metrics"]["hr_at_20"] == 1.0
    assert run["s_per_1000_users"] * 40 / 1000 == pytest.approx(run["best_s"], abs=6e-4)  # both rounded
    assert result["peak_rss_gb"] > 0.05 and result["wall_s"] > 0


def test_bench_recommend_json_with_the_flat_index_alone(tmp_path: Path) -> None:
    out = tmp_path / "recommend.json"
    _run("bench_recommend.py", "--items", "3000", "--users", "10", "--indexes", "flat", "--json", str(out))
    result = json.loads(out.read_text())
    assert sorted(result["methods"]) == ["exact_torch", "faiss_flat"]  # no HNSW built
    assert result["methods"]["faiss_flat"]["recall_at_k"] == 1.0  # flat is exact
    assert result["methods"]["faiss_flat"]["build_s"] >= 0
    assert result["peak_rss_gb"] > 0.05 and result["wall_s"] > 0


def test_bench_recommend_times_several_ef_search_on_one_hnsw_graph(tmp_path: Path) -> None:
    out = tmp_path / "recommend.json"
    _run("bench_recommend.py", "--items", "2000", "--users", "10", "--indexes", "hnsw",
         "--hnsw-ef-search", "16", "200", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert sorted(methods) == ["exact_torch", "faiss_hnsw_ef16", "faiss_hnsw_ef200"]
    assert result["hnsw"]["ef_search"] == [16, 200]
    assert methods["faiss_hnsw_ef16"]["build_s"] == methods["faiss_hnsw_ef200"]["build_s"]  # one build
    assert methods["faiss_hnsw_ef200"]["recall_at_k"] >= methods["faiss_hnsw_ef16"]["recall_at_k"]


def test_bench_recommend_times_several_nprobe_on_one_ivf_index(tmp_path: Path) -> None:
    out = tmp_path / "recommend.json"
    _run("bench_recommend.py", "--items", "2000", "--users", "10", "--indexes", "ivf", "--ivf-nlist", "20",
         "--ivf-nprobe", "1", "20", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert sorted(methods) == ["exact_torch", "faiss_ivf_np1", "faiss_ivf_np20"]
    assert result["ivf"] == {"nlist": 20, "nprobe": [1, 20]}
    assert methods["faiss_ivf_np1"]["build_s"] == methods["faiss_ivf_np20"]["build_s"]  # one build
    assert methods["faiss_ivf_np20"]["recall_at_k"] == 1.0  # every cell probed: exact


def test_bench_recommend_times_several_rerank_depths_on_one_pq_index(tmp_path: Path) -> None:
    out = tmp_path / "recommend.json"
    _run("bench_recommend.py", "--items", "2000", "--users", "10", "--indexes", "pq", "--pq-m", "16",
         "--pq-rerank", "20", "2000", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert sorted(methods) == ["exact_torch", "faiss_pq_rr20", "faiss_pq_rr2000"]
    assert result["pq"] == {"m": 16, "rerank": [20, 2000]}
    assert methods["faiss_pq_rr20"]["build_s"] == methods["faiss_pq_rr2000"]["build_s"]  # one build
    assert methods["faiss_pq_rr2000"]["recall_at_k"] == 1.0  # every item re-scored: exact
