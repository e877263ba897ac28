"""Local geometry of item vectors: how hard their nearest neighbours are for an approximate search.

Prints, for a real vector file (``data/embeddings/<m>.parquet``) and for the vectors that
``bench_correlate.py`` generates, on a seeded sample of query items (cosine similarity, unit vectors):

- the TwoNN intrinsic dimension (Facco et al. 2017: ``n / sum log(r2 / r1)`` over the sample, with r1, r2 the
  distances to the first and second neighbour). Vectors near a low-dimensional surface have a low one; noise
  in every dimension a high one, and then the true neighbours spread over many cells of a partition such as
  ivf's, which is what sets its recall at a fixed ``nprobe``;
- the mean cosine to the 1st and to the k-th neighbour and to a random item, and the k-th neighbour's
  cosine above a random item's relative to its room, ``(cos_k - cos_rand) / (1 - cos_rand)``.

The ``subspace`` geometry of ``bench_correlate.py`` was matched to Beauty's MiniLM vectors with this script:

    python benchmarks/geometry.py --embeddings <beauty data>/embeddings/text.parquet --items 12101
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    import numpy as np


def local_geometry(x: np.ndarray, k: int = 20, sample: int = 3000, seed: int = 0) -> dict[str, Any]:
    """The figures above for the rows of ``x`` (normalised here), over ``sample`` seeded query rows."""
    import numpy as np
    import torch

    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False)
    xt = torch.from_numpy(
        np.ascontiguousarray(x, dtype=np.float64)
    )  # close neighbours: float32 cosines round
    cos = xt[q] @ xt.T
    rand = cos.mean(1).numpy()  # the query itself counts 1/N: negligible
    cos[torch.arange(len(q)), torch.from_numpy(q)] = -2.0
    top = cos.topk(k, 1).values.numpy()
    dist = np.sqrt(np.maximum(2.0 - 2.0 * top, 1e-12))
    ratio = dist[:, 1] / dist[:, 0]
    ratio = ratio[np.isfinite(ratio) & (ratio > 1.0)]  # duplicates (r1 = r2 = 0) carry no information
    return {
        "items": len(x),
        "twonn_dim": round(float(len(ratio) / np.log(ratio).sum()), 2),
        "cos_1": round(float(top[:, 0].mean()), 3),
        f"cos_{k}": round(float(top[:, k - 1].mean()), 3),
        "cos_random": round(float(rand.mean()), 3),
        f"relative_cos_{k}": round(float(((top[:, k - 1] - rand) / (1.0 - rand)).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embeddings", type=Path, nargs="*", default=[], help="real vector files to measure")
    ap.add_argument(
        "--generated",
        nargs="*",
        choices=["isotropic", "subspace"],
        default=["isotropic", "subspace"],
        help="bench_correlate.py geometries to generate and measure",
    )
    ap.add_argument("--items", type=int, default=12_101, help="generated items")
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from benchmarks.bench_correlate import generate
    from pipeline.artifacts.vectors import read_item_vectors
    from pipeline.layout import Layout

    rows = []
    for path in args.embeddings:
        rows.append(
            {"vectors": str(path), **local_geometry(read_item_vectors(path).vectors, args.k, args.sample)}
        )
    for geometry in args.generated:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp) / "g", args.items, 384, args.clusters, 10, 0, geometry)
            x = read_item_vectors(Layout.flat(Path(tmp) / "g").embedding("text")).vectors
        rows.append({"vectors": f"generated, {geometry}", **local_geometry(x, args.k, args.sample)})
    for row in rows:
        print(json.dumps(row))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
