#!/usr/bin/env bash
# The GPU check (issue: speed). One H100, under 8 minutes, stock CUDA PyTorch image (PyTorch, timm; no installs):
#   bash bench/gpu.sh            # all models x fp32 / bf16+channels_last / + torch.compile, 224 px, batch 128
# Writes the table to stdout and, when $OUT is set (the device tool), $OUT/gpu_bench.json and $OUT/gpu_bench.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
timeout 460 python bench/gpu.py "$@" | tee "${OUT:-/tmp}/gpu_bench.txt"
