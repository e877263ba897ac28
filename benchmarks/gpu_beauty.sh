#!/usr/bin/env bash
# One prepared GPU check: ID-only SASRec and KDSR on Amazon Beauty, train to the best validation epoch and
# evaluate, timings + metrics as JSON in $OUT (default benchmarks/results). Budget: under 10 minutes on one
# H100/H200. The GPU machine has torch/pyarrow but no polars/dvc/mlflow, so the data is prepared here first:
#
#   # on the CPU machine (needs polars and the text teacher; ~3 min):
#   .venv/bin/python benchmarks/bench_train.py --prepare --data data/bench/beauty --variants sasrec_id --set train.epochs=1
#   .venv/bin/pip download -d data/bench/wheels pydantic pydantic-core annotated-types typing-inspection \
#       typing-extensions pyyaml safetensors tqdm            # only what the GPU machine may lack
#   # then with the device tool: command `bash benchmarks/gpu_beauty.sh`, carry [data/bench]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/bench/beauty}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if ! "$PY" -c "import pydantic, yaml, safetensors, tqdm" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links data/bench/wheels pydantic pyyaml safetensors tqdm
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || true
"$PY" benchmarks/bench_train.py --data "$DATA" --variants sasrec_id kdsr --device cuda \
  --out "$OUT/runs" --json "$OUT/gpu_beauty.json" ${EXTRA:-}
