#!/usr/bin/env bash
# The first-GPU check (benchmarks/gpu_check.py): bf16 peak, the pipeline's pretraining step at ELECTRA-Small's and
# -Base's shapes, then 200 steps, export and a short SST-2 fine-tune from that checkpoint; one table, ~8 minutes.
#   bash benchmarks/gpu_check.sh [--glue-dir DIR]      on a GPU node
#   bash benchmarks/gpu_check.sh --reduced             the CPU form CI runs (tiny shape, 20 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
exec "$PY" benchmarks/gpu_check.py "$@"
