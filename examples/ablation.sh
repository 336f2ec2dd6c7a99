#!/usr/bin/env bash
# Ablation on the demo at equal training budget (issue 16; docs/DEMO_RECIPE.md "Round 5"):
#   GroupViT (pgseg-demo with NPR off), PGSeg released-code mode, PGSeg intent (default) mode;
#   2 seeds each, the same steps, batch and data; bg_thresh calibrated per run on a separate split (seed 1);
#   mIoU on a 1,000-image val split (seed 0). Writes OUT/<variant>-s<seed>/metrics.json and OUT/ablation.md.
# Usage: bash examples/ablation.sh [OUT_DIR]     (default OUT_DIR: ablation_out)
# Environment: PGSEG_DEMO_DEVICE=auto|cpu|cuda (default auto); PGSEG_ABLATION_SEEDS (default "0 1").
# Cost: 6 demo trainings plus 12 evaluations; run it on an idle machine (GPU recommended).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-ablation_out}"
DEVICE="${PGSEG_DEMO_DEVICE:-auto}"
SEEDS="${PGSEG_ABLATION_SEEDS:-0 1}"

bash scripts/setup_env.sh demo --with-demo-data
. .venv/bin/activate

echo "[ablation] shards: 8,000 training composites, 1,000 val (seed 0); 200 calibration (seed 1)"
pgseg prep-shards --source demo --out "$OUT/shards" --photos "$OUT/photos" --n-train 8000 --n-val 1000 \
  --img-size 224 --overwrite
pgseg -q prep-shards --source demo --out "$OUT/calib" --n-train 0 --n-val 200 --img-size 224 --seed 1 --overwrite

declare -A FLAGS=(
  [groupvit]="--model.npr.enabled false"
  [released]="--model.npr.released_code true"
  [intent]=""
)
for variant in groupvit released intent; do
  for seed in $SEEDS; do
    run="$OUT/$variant-s$seed"
    echo "[ablation] $variant, seed $seed"
    # shellcheck disable=SC2086  # FLAGS holds several words on purpose
    pgseg -q train --model pgseg-demo --data "$OUT/shards" --out "$run" --device "$DEVICE" --overwrite \
      --train.seed "$seed" ${FLAGS[$variant]}
    pgseg -q eval --checkpoint "$run" --data "$OUT/calib" --split val-caption --device "$DEVICE" \
      --sweep bg_thresh=0.1:0.9:0.1 --output "$run/calib.json" --no-per-class > /dev/null
    thr=$(python examples/demo_calibrate.py "$run/calib.json")
    pgseg -q eval --checkpoint "$run" --data "$OUT/shards" --device "$DEVICE" --no-per-class \
      --bg-thresh "$thr" --output "$run/metrics.json" > /dev/null
  done
done
python examples/ablation_summary.py "$OUT" | tee "$OUT/ablation.md"
