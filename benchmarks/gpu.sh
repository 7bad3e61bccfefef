#!/usr/bin/env bash
# GPU benchmarks: the suite's cases on CUDA plus the 2.2B preset sampling one 1024² image (13 scales, bf16,
# KV cache, cfg 4, batch 1, random weights, d = 32, text width 2048, with the decode of a 1024² tokenizer of
# the reference configuration) and the 125M training throughput at 256² (images/s, batch 32).
#
#   bash benchmarks/gpu.sh                 # from the repository root; writes benchmarks/results/gpu/suite.{json,md}
#   REPEATS=3 bash benchmarks/gpu.sh       # fewer timed runs
#   CASES=sample2b bash benchmarks/gpu.sh  # some cases only
#
# Installs nothing: it uses .venv/bin/python if there is one, else `python` (override with PYTHON=...).
# The headline cases run first, so an interrupted run still leaves them in the results (written after
# every case). Timings synchronise the device before and after every timed run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python
fi

cases="${CASES:-sample2b,train_throughput,gemm,train,sample,resolution,tokenizer}"
repeats="${REPEATS:-5}"
out="${OUT:-benchmarks/results/gpu}"

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch ($py) sees no CUDA device; nothing run" >&2
    exit 1
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

mkdir -p "$out"
"$py" benchmarks/suite.py --device cuda --only "$cases" --repeats "$repeats" --out "$out" "$@"
echo "gpu.sh: wrote $out/suite.json and $out/suite.md" >&2
