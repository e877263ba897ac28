"""benchmarks/geometry.py's intrinsic dimension on point sets of known dimension, and the two geometries that
bench_correlate.py generates."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.geometry import local_geometry


@pytest.mark.parametrize("dim", [2, 6])
def test_twonn_finds_the_dimension_of_a_flat_patch(dim: int) -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(64, dim)))[0]  # an orthonormal dim-dimensional patch in 64-d
    x = rng.uniform(-1.0, 1.0, size=(4000, dim)) @ basis.T + rng.normal(size=64)  # off the origin
    got = local_geometry(x.astype(np.float32), k=5, sample=2000)["twonn_dim"]
    assert abs(got - dim) < 0.15 * dim


def test_the_subspace_geometry_is_low_dimensional_and_the_isotropic_one_is_not(tmp_path) -> None:
    from benchmarks.bench_correlate import generate
    from pipeline.artifacts.vectors import read_item_vectors
    from pipeline.layout import Layout

    dims = {}
    for geometry in ("isotropic", "subspace"):
        generate(tmp_path / geometry, 3000, 384, 20, 10, 0, geometry)
        x = read_item_vectors(Layout.flat(tmp_path / geometry).embedding("text")).vectors
        dims[geometry] = local_geometry(x, sample=1000)["twonn_dim"]
    assert dims["subspace"] < 10 < 40 < dims["isotropic"]
