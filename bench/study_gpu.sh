#!/usr/bin/env bash
# The study comparison under the study's protocol on one GPU, through train.py (experiment=study_gpu: 224 px, batch 8,
# Adam 1e-5, class weights [1, 10], patience 20, <= 30 epochs, bf16-mixed + channels_last), one job per study row,
# with the same calibration, threshold rule and report as every other run.
#   here, once:   .venv/bin/python bench/pack_isic2018.py      # bench/data/isic2018: official layout + the CPU split
#   on the GPU:   make install, then  bash bench/study_gpu.sh [key=value ...]
# The sweep dir's summary.md / summary.csv / summary.png are the comparison table and chart.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi here"
DATA=${DATA:-bench/data/isic2018}
PY=${PY:-.venv/bin/python}
"$PY" train.py -m experiment=study_gpu "data.root=$DATA" "data.split_file=$DATA/splits.csv" "$@"
