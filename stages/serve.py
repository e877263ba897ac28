"""Serve: the registered MLflow model over HTTP, as ``mlflow models serve --env-manager local`` does, with limits.

The same routes and answers as MLflow's scoring server (``POST /invocations``, ``GET /ping``, ``/health``,
``/version``), in the project's environment; before MLflow parses a request, a body over ``--max-body-bytes``
is refused with HTTP 413 and a JSON body nested deeper than ``--max-json-depth`` with HTTP 400, each with one
JSON message naming the limit (:mod:`pipeline.recommend.server`). Not a DVC stage: a long-running server.

    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db python -m stages.serve -m models:/kdsr/1 --port 5001
"""

import argparse
import sys
from pathlib import Path

from pipeline.recommend.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH
from stages._common import main


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "-m", "--model-uri", required=True, help="the model: models:/<name>/<version>, runs:/..., or a path"
    )
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    ap.add_argument("-p", "--port", type=int, default=5000, help="port to listen on (default: 5000)")
    ap.add_argument(
        "-t", "--timeout", type=_positive, default=None, help="seconds per request (default: MLflow's, 60)"
    )
    ap.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"larger request bodies get HTTP 413 (default: {DEFAULT_MAX_BODY_BYTES}, 10 MiB)",
    )
    ap.add_argument(
        "--max-json-depth",
        type=_positive,
        default=DEFAULT_MAX_JSON_DEPTH,
        help=f"JSON nested deeper gets HTTP 400 (default: {DEFAULT_MAX_JSON_DEPTH})",
    )
    args = ap.parse_args(argv)
    if Path(args.model_uri).exists():  # a local path: absolute before main() changes to the project root
        args.model_uri = str(Path(args.model_uri).resolve())
    return args


def run(args: argparse.Namespace) -> None:
    from mlflow.exceptions import MlflowException

    from pipeline.errors import PipelineError
    from pipeline.recommend.server import serve

    try:
        serve(args.model_uri, args.host, args.port, args.max_body_bytes, args.max_json_depth, args.timeout)
    except MlflowException as err:  # no such model or version, unreachable registry: one line, no traceback
        raise PipelineError(f"{args.model_uri}: {err.message}") from None


if __name__ == "__main__":
    arguments = _args(sys.argv[1:])
    main(lambda: run(arguments))
