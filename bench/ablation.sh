#!/usr/bin/env bash
# The recipe ablation behind docs/results/ablation.md: each row adds one lever to the row before, on the same lesion-disjoint
# split; every row is sized to about 10 minutes of training on 2 CPU cores. Then the external set, then the table.
#   [ROOT=../shared/data/isic2018] [ROWS="baseline_224 native_150x200 ..."] [EXTRA="key=value ..."] bash bench/ablation.sh
# EXTRA: overrides appended to every row (they win), e.g. a toy size for a smoke run (tests/test_bench.py).
# The final row is the full recipe for the hour: python train.py experiment=isic2018_cpu_best data.root=$ROOT
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-../shared/data/isic2018}
EXTERNAL=${EXTERNAL:-../shared/data/isic2017_test}
OUT=${OUT:-outputs/ablation}
PY=${PY:-.venv/bin/python}
BASE=(experiment=isic2018_cpu_baseline "data.root=$ROOT" callbacks.progress_bar=null)
mkdir -p "$OUT"
declare -A ROW
ROW[baseline_224]="trainer.max_epochs=2 trainer.limit_train_batches=0.7"                       # the baseline, 224x224
ROW[native_150x200]="backbone.input_size=[150,200] trainer.max_epochs=3"                            # + native 150x200
ROW[adamw_ema]="${ROW[native_150x200]} optimizer=adamw scheduler=warmup_cosine optimizer.lr=5e-4 model.label_smoothing=0.1 model.ema_decay=0.999"
ROW[balanced_ce]="${ROW[adamw_ema]} model.malignant_weight=null model.class_weights=balanced"         # + balanced 7-class CE
# balanced_ce cost P(malignant) ranking (val AUROC 0.867 vs 0.903), so colour_augmentation builds on adamw_ema.
ROW[colour_augmentation]="${ROW[adamw_ema]} data.transforms.color_constancy=true data.transforms.color_jitter=0.2 data.transforms.rotate=180 data.transforms.scale=0.15 data.transforms.translate=0.05"
ROW[activation_cache]="${ROW[colour_augmentation]} activation_cache.enabled=true trainer.max_epochs=4"                 # + cached frozen prefix
ALL="baseline_224 native_150x200 adamw_ema balanced_ce colour_augmentation activation_cache"
for row in ${ROWS:-$ALL}; do
  dir="$OUT/$row"
  if [ -f "$dir/metrics.json" ]; then echo "row $row: done already ($dir)"; continue; fi
  echo "row $row: ${ROW[$row]}"
  # shellcheck disable=SC2086
  /usr/bin/time -f "row $row: %e s wall, %M KB peak RSS" "$PY" train.py "${BASE[@]}" ${ROW[$row]} ${EXTRA:-} "hydra.run.dir=$dir" \
    > "$dir.log" 2>&1 || { echo "row $row failed: see $dir.log"; tail -5 "$dir.log"; exit 1; }
  tail -1 "$dir.log"
  ckpt=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['best_checkpoint'])" "$dir/metrics.json")
  "$PY" bench/external.py "$ckpt" --root "$EXTERNAL" --out "$dir/external.json" 2>/dev/null
done
# shellcheck disable=SC2086
"$PY" bench/ablation_table.py "$OUT" ${ROWS:-$ALL}
