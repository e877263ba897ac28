"""Recommend: models/ + data/processed/{sequences,items}.parquet -> data/recommendations.parquet.

Top-``recommend.k`` items for every user from the whole history (history masked when
``recommend.mask_history``). With ``--items``, the top-K of one history instead, printed with item text:

    python -m stages.recommend --items B004756YJA B004ZT0SSG --k 10
"""

import argparse
import sys
from pathlib import Path

from pipeline.config import stage_params
from pipeline.layout import Layout
from pipeline.lineage import check_recommender
from pipeline.recommend.recommend import index_spec
from pipeline.recommend.topk import ItemCatalogue, Recommender
from pipeline.runner import run_stage
from stages._common import main


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.recommend", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--items", nargs="+", metavar="ITEM_ID", help="one history: original item ids, oldest first"
    )
    ap.add_argument("--k", type=int, help="items to recommend (default: recommend.k)")
    ap.add_argument(
        "--mask-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out items of the history (default: recommend.mask_history)",
    )
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    args = _args(sys.argv[1:] if argv is None else argv)
    params, layout = stage_params("recommend"), Layout.project(Path())
    p = params.recommend
    if args.items is None:
        if args.k is not None or args.mask_history is not None:
            raise SystemExit("--k and --mask-history go with --items (the stage reads recommend.* params)")
        run_stage("recommend", params, layout)
        return
    k = p.k if args.k is None else args.k
    mask = p.mask_history if args.mask_history is None else args.mask_history
    catalogue = ItemCatalogue.from_parquet(layout.items, with_text=True)
    check_recommender(layout.models, layout.items)  # the model's dense ids must mean these items
    rec = Recommender.load(layout.models, catalogue, index=index_spec(p))
    ((ids, scores),) = rec.recommend([args.items], k, mask)
    text = dict(zip(catalogue.ids, catalogue.text or [], strict=False))
    print(
        f"top {len(ids)} for a history of {len(args.items)} item(s) (history {'masked' if mask else 'kept'}):"
    )
    print(f"{'rank':>4}  {'item_id':<12} {'score':>8}  text")
    for r, (item_id, score) in enumerate(zip(ids, scores, strict=True), 1):
        print(f"{r:>4}  {item_id:<12} {score:>8.3f}  {text.get(item_id, '')[:100]}")


if __name__ == "__main__":
    main(run)
