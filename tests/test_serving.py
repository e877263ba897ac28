"""`mlflow models serve` of the registered recommender answers POST /invocations with the in-process top-K, and
`python -m stages.serve` answers the same while refusing deep (HTTP 400) and large (HTTP 413) bodies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import write_tiny_recommender

from pipeline.config import MLflowParams
from pipeline.recommend.topk import Recommender

pytestmark = pytest.mark.slow


def free_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    except OSError as err:
        pytest.skip(f"cannot bind a loopback port ({err})")


def post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@dataclass
class Registered:
    root: Path
    uri: str  # the tracking URI
    model: str  # models:/<name>/1
    histories: list[list[str]]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """The tiny recommender logged and registered as ``kdsr-serve`` version 1 in a fresh SQLite store."""
    mlflow = pytest.importorskip("mlflow")
    from pipeline.io import file_digest
    from pipeline.recommend.register import log_recommender

    tmp_path = tmp_path_factory.mktemp("serve")
    seqs = write_tiny_recommender(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSR_MLFLOW", "1")
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("serve", artifact_location=(tmp_path / "art").as_uri())
        tags = {"model.sha256": file_digest(tmp_path / "models/model.safetensors")}
        with mlflow.start_run(experiment_id=exp, tags=tags):
            pass
        params = MLflowParams(tracking_uri=uri, experiment="serve", register_as="kdsr-serve")
        assert log_recommender(params, tmp_path / "models", tmp_path / "data/processed/items.parquet")
    histories = [[f"B{i:09d}" for i in seqs[0]], [f"B{i:09d}" for i in seqs[5]]]
    return Registered(tmp_path, uri, "models:/kdsr-serve/1", histories)


@contextmanager
def running(cmd: list[str], reg: Registered, port: int, log_name: str) -> Iterator[str]:
    """Start ``cmd`` (a server on ``port``) in its own session; yield its base URL once /ping answers."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": reg.uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    log_path = reg.root / log_name
    log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(f"{cmd[:3]} exited ({server.returncode}):\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after 240 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: mlflow and the uvicorn it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log_file.close()


def expected_top_k(reg: Registered, k: int) -> list[tuple[list[str], list[float]]]:
    return Recommender.load(reg.root / "models", reg.root / "data/processed/items.parquet", "cpu").recommend(
        reg.histories, k=k
    )


def assert_same_top_k(body: dict, expected: list[tuple[list[str], list[float]]]) -> None:
    assert [p["item_ids"] for p in body["predictions"]] == [ids for ids, _ in expected]
    for p, (_, scores) in zip(body["predictions"], expected, strict=True):
        assert p["scores"] == pytest.approx(scores, rel=1e-6)


def assert_serves_top_k(url: str, reg: Registered) -> None:
    """The model's top-5 for the registered histories, and MLflow's 400 naming an unknown id."""
    status, body = post(
        f"{url}/invocations", {"dataframe_records": [{"items": h} for h in reg.histories], "params": {"k": 5}}
    )
    assert status == 200, body
    assert_same_top_k(body, expected_top_k(reg, 5))
    status, body = post(f"{url}/invocations", {"dataframe_records": [{"items": ["B000000001", "nope"]}]})
    assert status == 400 and "unknown item id(s): nope" in body["message"]


def test_mlflow_models_serve_answers_with_the_top_k(registered: Registered) -> None:
    port = free_loopback_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", registered.model]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with running(cmd, registered, port, "mlflow-serve.log") as url:
        assert_serves_top_k(url, registered)


def post_bytes(url: str, data: bytes | Iterator[bytes]) -> tuple[int, dict]:
    """POST raw bytes; an iterator goes out chunked (no Content-Length)."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_stages_serve_refuses_deep_and_large_bodies_and_otherwise_answers_as_mlflow(
    registered: Registered,
) -> None:
    port = free_loopback_port()
    cmd = [
        sys.executable,
        "-m",
        "stages.serve",
        "-m",
        registered.model,
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    cmd += ["--max-body-bytes", "300000"]  # the 100,000-deep body (200 kB) is under it: its depth is refused
    with running(cmd, registered, port, "stages-serve.log") as url:
        deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, body = post_bytes(f"{url}/invocations", deep)
        assert (status, body["message"]) == (
            400,
            "JSON body nested 100001 levels deep; the server's limit is 32 (--max-json-depth)",
        )
        assert "stack_trace" not in body
        big = json.dumps({"dataframe_records": [{"items": ["B000000001"] * 30_000}]}).encode()
        status, body = post_bytes(f"{url}/invocations", big)
        assert status == 413 and body["message"] == (
            f"request body over the server's limit of 300000 bytes (--max-body-bytes): Content-Length "
            f"{len(big)}; split the request"
        )
        status, body = post_bytes(f"{url}/invocations", iter([big[:200_000], big[200_000:]]))  # chunked
        assert status == 413 and "limit of 300000 bytes" in body["message"]

        # everything else is MLflow's scoring server: the same answers as `mlflow models serve`
        assert_serves_top_k(url, registered)
        for route in ("/ping", "/health"):
            with urllib.request.urlopen(f"{url}{route}", timeout=10) as r:
                assert (r.status, r.read()) == (200, b"\n")
        import mlflow

        with urllib.request.urlopen(f"{url}/version", timeout=10) as r:
            assert r.read().decode() == mlflow.__version__
