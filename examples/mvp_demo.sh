#!/usr/bin/env bash
# MVP-SEG vs the training-free baseline on the demo data, plus the OCLoss and GPR ablations
# (docs/MVP_SEG.md §7). Same frozen backbone for every row: the trained demo checkpoint.
#
#   bash examples/demo.sh demo_out          # first: demo shards (with train-seen) and demo_out/run
#   bash examples/mvp_demo.sh demo_out      # then this; STEPS=300 DEVICE=cpu by default
#
# Writes demo_out/mvp/{baseline_groupvit,baseline_imagenet80,full,no_oc,no_gpr}.json and prints
# mIoU(S) / mIoU(U) / hIoU of each (seen: the 30 caption classes, unseen: the 8 held-out classes).
set -euo pipefail
OUT="${1:-demo_out}"
DEVICE="${DEVICE:-cpu}"
STEPS="${STEPS:-300}"
BACKBONE="pgseg:$OUT/run"
SHARDS="$OUT/shards"
M="$OUT/mvp"
mkdir -p "$M"
SIZE=(--mvp.short_side 224 --mvp.max_long 224)

for t in groupvit imagenet80; do
  pgseg -q eval -c "baseline:$BACKBONE" --data "$SHARDS" --device "$DEVICE" --cache "$M/dense_eval.h5" \
    --output "$M/baseline_$t.json" --no-per-class --mvp.templates "$t" "${SIZE[@]}" > /dev/null
done
train() {  # name, extra overrides...
  local name="$1"; shift
  pgseg -q train --method mvp-seg --backbone "$BACKBONE" --data "$SHARDS" --out "$M/$name" --overwrite \
    --device "$DEVICE" --mvp.steps "$STEPS" "${SIZE[@]}" "$@"
  pgseg -q eval -c "$M/$name/mvp.pt" --data "$SHARDS" --device "$DEVICE" --cache "$M/dense_eval.h5" \
    --output "$M/$name.json" --no-per-class > /dev/null
}
train full
train no_oc --mvp.lambda_oc 0
train no_gpr --mvp.gpr false

python - "$M" <<'PY'
import json, sys
from pathlib import Path
m = Path(sys.argv[1])
fmt = lambda v: "   -" if v is None else f"{v:5.1f}"
print(f"{'method':22s} mIoU(S) mIoU(U)  hIoU")
for name in ("baseline_groupvit", "baseline_imagenet80", "full", "no_oc", "no_gpr"):
    r = json.loads((m / f"{name}.json").read_text())
    print(f"{name:22s} {fmt(r['seen_mIoU'])}   {fmt(r['unseen_mIoU'])}  {fmt(r['hIoU'])}")
PY
