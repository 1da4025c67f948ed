#!/usr/bin/env bash
# The study comparison under the study's protocol (224 px, batch 8, Adam 1e-5, class weight 10, patience 20, <= 30
# epochs) on one H100, within 8 minutes, stock CUDA PyTorch image (PyTorch, timm, OpenCV; no Hydra/albumentations).
#   here, once:  .venv/bin/python bench/pack_isic2018.py        # bench/data/: ~40 MB of JPEGs + Lite0 weights
#   on the GPU:  run(command="bash bench/study_gpu.sh", carry=["bench/data"], timeout_s=560)
# Writes the table to stdout and study_gpu.md / study_gpu.json to $OUT (else bench/data/).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1
# 8-minute envelope: ~30 s preprocessing, 400 s training budget per row (rows run concurrently), evaluation after.
timeout 475 python bench/study_gpu.py --pack bench/data/isic2018_pack.npz --budget-s "${BUDGET_S:-400}" "$@"
