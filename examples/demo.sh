#!/usr/bin/env bash
# pgseg end-to-end demo on real images:
#   installs pgseg + the demo sources, builds the demo composites (real photos + real-photo cutouts,
#   clip art and emoji, with captions and exact masks), trains the small hybrid PGSeg (pgseg-demo) on the
#   captions only, evaluates it and the same model untrained, and segments the bundled real photos; the last
#   step writes OUT_DIR/index.html (curves, per-class IoU, predictions, overlays: docs/FIGURES.md §4).
# Usage: bash examples/demo.sh [OUT_DIR]      (default OUT_DIR: demo_out)
# Environment: PGSEG_DEMO_DEVICE=auto|cpu|cuda (default auto: the GPU when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
DEVICE="${PGSEG_DEMO_DEVICE:-auto}"
start=$(date +%s)

bash scripts/setup_env.sh demo --with-demo-data
. .venv/bin/activate
export PGSEG_DEMO_OUT="$OUT"

echo "[demo] 1/6 building the demo shards (and a calibration split from another seed)"
# --overwrite: a rerun of the demo replaces its own earlier shards and runs (each replaced only when complete)
pgseg prep-shards --source demo --out "$OUT/shards" --photos "$OUT/photos" --n-train 8000 --n-val 200 --img-size 224 \
  --overwrite
pgseg -q prep-shards --source demo --out "$OUT/calib" --n-train 0 --n-val 200 --img-size 224 --seed 1 --overwrite

echo "[demo] 2/6 training pgseg-demo (captions only; masks are never used)"
pgseg train --model pgseg-demo --data "$OUT/shards" --out "$OUT/run" --device "$DEVICE" --overwrite
pgseg -q train --model pgseg-demo --data "$OUT/shards" --out "$OUT/untrained" --device "$DEVICE" --overwrite \
  --train.steps 0

echo "[demo] 3/6 choosing bg_thresh on the calibration split (seed 1), for each model"
for m in run untrained; do
  pgseg -q eval --checkpoint "$OUT/$m" --data "$OUT/calib" --split val-caption --device "$DEVICE" \
    --sweep bg_thresh=0.1:0.9:0.1 --output "$OUT/calib/metrics_$m.json" --no-per-class > /dev/null
done
THR_RUN=$(python examples/demo_calibrate.py "$OUT/calib/metrics_run.json")
THR_UNTRAINED=$(python examples/demo_calibrate.py "$OUT/calib/metrics_untrained.json")
echo "[demo] bg_thresh: trained $THR_RUN, untrained $THR_UNTRAINED"

echo "[demo] 4/6 evaluating the trained model"
pgseg eval --checkpoint "$OUT/run" --data "$OUT/shards" --device "$DEVICE" --no-per-class --bg-thresh "$THR_RUN"
echo "[demo] 5/6 evaluating the same model untrained"
pgseg -q eval --checkpoint "$OUT/untrained" --data "$OUT/shards" --device "$DEVICE" --no-per-class \
  --bg-thresh "$THR_UNTRAINED" > /dev/null

echo "[demo] 6/6 segmenting the bundled real photos"
pgseg segment "$OUT/photos" --checkpoint "$OUT/run" --out "$OUT/segment" --device "$DEVICE" \
  --classes-file examples/demo_photo_classes.txt --short-side 320 --bg-thresh "$THR_RUN"

python examples/demo_summary.py "$OUT" "$(( $(date +%s) - start ))"
