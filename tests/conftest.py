"""Shared fixtures: the real params.yaml composed once and shrunk for tests (tiny data, CPU, no MLflow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT, Params, load_params, with_overrides

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
BEAUTY_DIR = SHARED_DATA / "amazon-beauty"

# Tests never write to the user's MLflow store.
os.environ.setdefault("KDSR_MLFLOW", "0")


@pytest.fixture(scope="session")
def base_params() -> Params:
    """The project's real params.yaml, validated."""
    return load_params()


@pytest.fixture
def tiny_params(base_params: Params) -> Params:
    """The real config shrunk for tests: a small demo catalogue, few epochs, CPU, tracking off."""
    return with_overrides(
        base_params,
        {
            "data.demo.users": 300,
            "data.demo.items": 120,
            "data.demo.families": 6,
            "data.demo.image_size": 16,
            "embed.device": "cpu",
            "correlate.device": "cpu",
            "correlate.dim": 32,
            "correlate.sample_pairs": 2000,
            "correlate.codes": 8,
            "correlate.topk": 5,
            "train.device": "cpu",
            "train.epochs": 2,
            "train.hidden": 32,
            "train.batch_size": 64,
            "mlflow.enabled": False,
        },
    )


def beauty_available() -> bool:
    return (BEAUTY_DIR / "Beauty.txt").exists() and (BEAUTY_DIR / "items.tsv").exists()


requires_beauty = pytest.mark.skipif(
    not beauty_available(), reason="../shared/data/amazon-beauty not present"
)


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with the working directory in an empty temporary folder (stage outputs go there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
