#!/usr/bin/env bash
# The main job: set up, then rebuild every DVC stage on the embedded demo data and print the metrics.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/repro.sh -f`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -d .git ] || git init -q  # DVC needs a git (or --no-scm) repository
dvc repro "$@"
# a compact view of reports/metrics.json (`dvc metrics show` lists every key)
.venv/bin/python - <<'PY'
import json
m = json.load(open("reports/metrics.json"))
keys = ["hr_at_10", "ndcg_at_10", "hr_at_20", "ndcg_at_20"]
print(f"{'':22}" + "".join(f"{k:>12}" for k in keys))
for name, part in [("model, valid", m["valid"]), ("model, test", m["test"]),
                   ("popularity, test", m["popularity"]["test"])]:
    print(f"{name:22}" + "".join(f"{part[k]:12.4f}" for k in keys))
PY
