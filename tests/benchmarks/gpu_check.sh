#!/usr/bin/env bash
# GPU readiness in one command, one table (tests/benchmarks/bench_scaling.py prints it).
#
# With CUDA: the suite's CUDA tests (pytest -k cuda), then sampling (16 × 200 EM steps) and
# training-step rates at 64², 128² and 256², and the solver on 1000 FitzHugh–Nagumo
# trajectories at 128², all under a 5-minute limit. Without CUDA, or with --dry-run: the same
# script at a tiny size on the CPU (a few seconds; CI runs it this way).
#
#   bash tests/benchmarks/gpu_check.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=tests/benchmarks/bench_scaling.py
if [[ "${1:-}" != "--dry-run" ]] && python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    timeout 300 python "$bench" --device cuda --cuda-tests --sizes 64 128 256 --trajectories 1000
else
    echo "gpu_check: dry run on the CPU (no CUDA device, or --dry-run)"
    python "$bench" --device cpu --dry-run --trajectories 2 --threads 1
fi
