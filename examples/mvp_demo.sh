#!/usr/bin/env bash
# MVP-SEG vs the training-free baseline on the demo data, plus the OCLoss and GPR ablations
# (docs/MVP_SEG.md §7). Same frozen backbone for every row (default: the trained demo checkpoint).
#
#   bash examples/demo.sh demo_out          # first: demo shards (with train-seen), demo_out/calib, demo_out/run
#   bash examples/mvp_demo.sh demo_out      # then this; STEPS=300 DEVICE=cpu by default
#   BACKBONE=pgseg:ablation_out/intent-s0 SHARDS=ablation_out/shards CALIB=ablation_out/calib \
#     bash examples/mvp_demo.sh mvp_out    # the run of docs/MVP_SEG.md §7 (examples/ablation.sh's data)
#
# Background follows GroupViT's rule for every row (a pixel is background where no class reaches bg_thresh;
# MVP-SEG does not learn a background class), with bg_thresh calibrated per row on the calibration split's
# seen-class images (val-caption, another seed), never on the reported splits. The "bgclass" row is MVP-SEG as
# published, background learned as one more seen class. Writes OUT/mvp/<row>.json and prints
# mIoU(S) / mIoU(U) / hIoU of each (seen: the 30 caption classes, unseen: the 8 held-out classes).
set -euo pipefail
OUT="${1:-demo_out}"
DEVICE="${DEVICE:-cpu}"
STEPS="${STEPS:-300}"
BACKBONE="${BACKBONE:-pgseg:$OUT/run}"
SHARDS="${SHARDS:-$OUT/shards}"
CALIB="${CALIB:-$OUT/calib}"
M="$OUT/mvp"
mkdir -p "$M"
SIZE=(--mvp.short_side 224 --mvp.max_long 224)

calibrate() {  # reference, row name, extra eval args... -> prints the best bg_thresh (mIoU on val-caption)
  local ref="$1" name="$2"; shift 2
  for t in 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9; do
    pgseg -q eval -c "$ref" --data "$CALIB" --split val-caption --device "$DEVICE" --cache "$M/dense_calib.h5" \
      --output "$M/calib_$name/t$t.json" --no-per-class --bg-thresh "$t" "${SIZE[@]}" "$@" > /dev/null
  done
  python - "$M/calib_$name" <<'PY'
import json, sys
from pathlib import Path
rows = [(json.loads(p.read_text())["splits"]["all"]["mIoU"], -float(p.stem[1:])) for p in Path(sys.argv[1]).glob("t*.json")]
print(f"{-max(rows)[1]:g}")
PY
}
evaluate() {  # reference, row name, bg_thresh, extra eval args...
  local ref="$1" name="$2" thr="$3"; shift 3
  pgseg -q eval -c "$ref" --data "$SHARDS" --device "$DEVICE" --cache "$M/dense_eval.h5" --output "$M/$name.json" \
    --no-per-class --bg-thresh "$thr" "${SIZE[@]}" "$@" > /dev/null
}
train() {  # row name, extra overrides...
  local name="$1"; shift
  pgseg -q train --method mvp-seg --backbone "$BACKBONE" --data "$SHARDS" --out "$M/$name" --overwrite \
    --device "$DEVICE" --mvp.steps "$STEPS" "${SIZE[@]}" "$@"
}

for t in groupvit imagenet80; do
  thr=$(calibrate "baseline:$BACKBONE" "baseline_$t" --mvp.templates "$t")
  evaluate "baseline:$BACKBONE" "baseline_$t" "$thr" --mvp.templates "$t"
done
for row in full no_oc no_gpr; do
  case "$row" in
    full) extra=() ;;
    no_oc) extra=(--mvp.lambda_oc 0) ;;
    no_gpr) extra=(--mvp.gpr false) ;;
  esac
  train "$row" --mvp.bg_thresh 0.5 "${extra[@]}"
  thr=$(calibrate "$M/$row/mvp.pt" "$row")
  evaluate "$M/$row/mvp.pt" "$row" "$thr"
done
train bgclass  # as published: background is a learned seen class, scored by its prompts
pgseg -q eval -c "$M/bgclass/mvp.pt" --data "$SHARDS" --device "$DEVICE" --cache "$M/dense_eval.h5" \
  --output "$M/bgclass.json" --no-per-class "${SIZE[@]}" > /dev/null

python - "$M" <<'PY'
import json, sys
from pathlib import Path
m = Path(sys.argv[1])
fmt = lambda v: "   -" if v is None else f"{v:5.1f}"
print(f"{'row':22s} bg_thresh mIoU(S) mIoU(U)  hIoU")
for name in ("baseline_groupvit", "baseline_imagenet80", "full", "no_oc", "no_gpr", "bgclass"):
    r = json.loads((m / f"{name}.json").read_text())
    thr = r["eval_config"].get("bg_thresh", 0.0)
    print(f"{name:22s} {thr:9g} {fmt(r['seen_mIoU'])}   {fmt(r['unseen_mIoU'])}  {fmt(r['hIoU'])}")
PY
