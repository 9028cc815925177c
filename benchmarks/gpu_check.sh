#!/usr/bin/env bash
# The prepared GPU check (issue 11 §4), at most 8 minutes on one GPU:
#   1. bench_layers on CUDA at N = 1024, 4096, 16384: emitted vs generic vs vanilla (FlashAttention), bf16;
#   2. the emitted layers' SDPA calls (which kernel) and their time against FlashAttention, N up to 16384, bf16;
#   3. as many epochs as fit of the paper's Sudoku recipe (sudoku_paper) with the compiled bf16 trainer;
# writing one results markdown, benchmarks/results/gpu_check.md (see benchmarks/gpu_check.py for the options).
#
#   bash benchmarks/gpu_check.sh              # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: the same steps at a tiny size on the CPU
#
# Needs a Python with torch (CUDA build) and energyarch's dependencies; uses ./.venv when there is one, else
# $PYTHON, else python3. A hard stop after GPU_CHECK_TIMEOUT seconds (default 480) backs up the script's own
# time budget; the markdown is rewritten after each stage, so a stopped run keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export MPLBACKEND=Agg
exec timeout --signal=INT --kill-after=15 "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" benchmarks/gpu_check.py "$@"
