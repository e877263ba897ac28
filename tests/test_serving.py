"""`mlflow models serve` of the registered recommender answers POST /invocations with the in-process top-K."""

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


def test_mlflow_models_serve_answers_with_the_top_k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from pipeline.io import file_digest
    from pipeline.recommend.register import log_recommender

    seqs = write_tiny_recommender(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("KDSR_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve", artifact_location=(tmp_path / "art").as_uri())
    tags = {"model.sha256": file_digest(tmp_path / "models/model.safetensors")}
    with mlflow.start_run(experiment_id=exp, tags=tags):
        pass
    params = MLflowParams(tracking_uri=uri, experiment="serve", register_as="kdsr-serve")
    assert log_recommender(params, tmp_path / "models", tmp_path / "data/processed/items.parquet")

    port = free_loopback_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/kdsr-serve/1", "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    log_file = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"mlflow models serve exited ({server.returncode}):\n{(tmp_path / 'serve.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not up after 240 s:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.5)

        histories = [[f"B{i:09d}" for i in seqs[0]], [f"B{i:09d}" for i in seqs[5]]]
        status, body = post(
            f"http://127.0.0.1:{port}/invocations",
            {"dataframe_records": [{"items": h} for h in histories], "params": {"k": 5}},
        )
        assert status == 200, body
        expected = Recommender.load(
            tmp_path / "models", tmp_path / "data/processed/items.parquet", "cpu"
        ).recommend(histories, k=5)
        assert [p["item_ids"] for p in body["predictions"]] == [ids for ids, _ in expected]
        for p, (_, scores) in zip(body["predictions"], expected, strict=True):
            assert p["scores"] == pytest.approx(scores, rel=1e-6)

        status, body = post(
            f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"items": ["B000000001", "nope"]}]}
        )
        assert status == 400 and "unknown item id(s): nope" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: mlflow and the uvicorn it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log_file.close()
