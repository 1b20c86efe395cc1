#!/usr/bin/env bash
# The prepared GPU check: run it on any machine with an NVIDIA GPU (nothing in the project needs one).
# It prints the device, then what bench/gpu_check.py measures: the in-process engines in bf16 (rollout
# tokens/s, step time, peak memory), vLLM (start, tokens/s, trainer / generator log-prob parity before and
# after a weight sync) and a Ray GRPO stage (FSDP2 on NCCL + the vLLM generator), skipping, with the reason,
# whatever the machine's Python cannot import. Every number also goes to OUT_DIR/gpu_check.json.
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (PYTHON=... to choose the interpreter; ~5 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
