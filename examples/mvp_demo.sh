#!/usr/bin/env bash
# MVP-SEG vs the training-free baseline on the demo data, plus the OCLoss and GPR ablations
# (docs/MVP_SEG.md §7). Same frozen backbone for every row (default: the trained demo checkpoint).
#
#   bash examples/demo.sh demo_out          # first: demo shards (with train-seen), demo_out/calib, demo_out/run
#   bash examples/mvp_demo.sh demo_out      # then this; STEPS=300 DEVICE=cpu by default
#   BACKBONE=pgseg:ablation_out/intent-s0 SHARDS=ablation_out/shards CALIB=ablation_out/calib \
#     bash examples/mvp_demo.sh mvp_out    # the run of docs/MVP_SEG.md §7 (examples/ablation.sh's data)
# SEEDS (default "0 1 2 3": prompt seeds of the full model on demo-caption-22-8), ABLATION_SEEDS (default "0 1":
# the no-OCLoss / no-GPR rows), THRESHOLDS (default 0.1 … 0.9) and SHORT (image side, default 224) make a quick
# smoke run possible. All prompt trainings share one dense-map cache, so the training images are encoded once.
#
# Two seen / unseen splits (docs/MVP_SEG.md §5): demo-30-8 (unseen: the 8 held-out classes, which the backbone
# never saw in a caption) and demo-caption-22-8 (unseen: 8 of the 30 caption classes, which the backbone knows
# but the prompts never see). Background follows GroupViT's rule (a pixel is background where no class reaches
# bg_thresh; MVP-SEG does not learn a background class) with bg_thresh calibrated per row on the calibration
# split's val-caption images (another seed), by the mIoU of background and the seen classes only. The
# "bgclass" row is MVP-SEG as published: background learned as one more seen class, no threshold.
# Every row is also evaluated without background (--ignore-background: background pixels ignored, only the
# classes scored), the convention of MVP-SEG's own benchmarks (VOC20, PC59, COCO-Stuff-171).
# Writes OUT/mvp/<row>.json (with background) and OUT/mvp/nobg_<row>.json, and prints mIoU(S) / mIoU(U) /
# hIoU of each row under both protocols. Rerun after an interruption: finished rows and trained prompts
# (OUT/mvp/<row>/mvp.pt) are kept; delete OUT/mvp to start over.
set -euo pipefail
OUT="${1:-demo_out}"
DEVICE="${DEVICE:-cpu}"
STEPS="${STEPS:-300}"
BACKBONE="${BACKBONE:-pgseg:$OUT/run}"
SHARDS="${SHARDS:-$OUT/shards}"
CALIB="${CALIB:-$OUT/calib}"
M="$OUT/mvp"
mkdir -p "$M"
SIZE=(--mvp.short_side "${SHORT:-224}" --mvp.max_long "${SHORT:-224}")
THRESHOLDS="${THRESHOLDS:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9}"
SEEDS="${SEEDS:-0 1 2 3}"
ABLATION_SEEDS="${ABLATION_SEEDS:-0 1}"
command -v pgseg > /dev/null || { echo "pgseg not found: activate the project's environment (. .venv/bin/activate)"; exit 1; }

calibrate() {  # reference, row, split, extra eval args... -> prints bg_thresh with the best mIoU (background + seen)
  local ref="$1" row="$2" zs="$3"; shift 3
  mkdir -p "$M/calib_$row"
  for t in $THRESHOLDS; do
    pgseg -q eval -c "$ref" --data "$CALIB" --split val-caption --zs-split "$zs" --device "$DEVICE" \
      --cache "$M/dense_calib.h5" --output "$M/calib_$row/t$t.json" --no-per-class --bg-thresh "$t" "${SIZE[@]}" \
      "$@" > /dev/null
  done
  python -P - "$M/calib_$row" "$zs" <<'PY'
import json, math, sys
from pathlib import Path
from pgseg_core.splits import load_split
keep = ["background", *load_split(sys.argv[2]).seen]
best = None
for p in Path(sys.argv[1]).glob("t*.json"):
    per_class = json.loads(p.read_text())["splits"]["all"]["per_class"]
    ious = [per_class[c]["IoU"] for c in keep if c in per_class and per_class[c]["gt_pixels"] > 0]
    score = (sum(ious) / len(ious), -float(p.stem[1:]))
    best = max(best or score, score)
print(f"{-best[1]:g}")
PY
}
evaluate() {  # reference, row, split, bg_thresh, extra eval args...
  local ref="$1" row="$2" zs="$3" thr="$4"; shift 4
  pgseg -q eval -c "$ref" --data "$SHARDS" --zs-split "$zs" --device "$DEVICE" --cache "$M/dense_eval.h5" \
    --output "$M/$row.json" --no-per-class --bg-thresh "$thr" "${SIZE[@]}" "$@" > /dev/null
  pgseg -q eval -c "$ref" --data "$SHARDS" --zs-split "$zs" --device "$DEVICE" --cache "$M/dense_eval.h5" \
    --output "$M/nobg_$row.json" --no-per-class --ignore-background "${SIZE[@]}" "$@" > /dev/null
}
train() {  # row, split, extra overrides...
  local row="$1" zs="$2"; shift 2
  pgseg -q train --method mvp-seg --backbone "$BACKBONE" --data "$SHARDS" --zs-split "$zs" --out "$M/$row" \
    --overwrite --device "$DEVICE" --mvp.steps "$STEPS" --dense-cache "$M/dense_train.h5" "${SIZE[@]}" "$@"
}
row() {  # row, split, "baseline TEMPLATES" or "train OVERRIDES...", extra eval args for both steps
  local name="$1" zs="$2" kind="$3"; shift 3
  [ -f "$M/$name.json" ] && [ -f "$M/nobg_$name.json" ] && return  # done by an earlier, interrupted run
  local ref="$M/$name/mvp.pt" evargs=()
  [ "$zs" = demo-caption-22-8 ] && evargs=(--split val-caption)
  if [ "$kind" = baseline ]; then
    ref="baseline:$BACKBONE"; evargs+=(--mvp.templates "$1")
  elif [ ! -f "$ref" ]; then  # trained prompts of an interrupted run are kept
    train "$name" "$zs" --mvp.bg_thresh 0.5 "$@"
  fi
  local thr
  thr=$(calibrate "$ref" "$name" "$zs" "${evargs[@]}")
  evaluate "$ref" "$name" "$zs" "$thr" "${evargs[@]}"
}

row baseline_groupvit demo-30-8 baseline groupvit
row baseline_imagenet80 demo-30-8 baseline imagenet80
row full demo-30-8 train
if [ ! -f "$M/bgclass.json" ]; then  # as published: background is a learned seen class, scored by its prompts
  train bgclass demo-30-8
  pgseg -q eval -c "$M/bgclass/mvp.pt" --data "$SHARDS" --device "$DEVICE" --cache "$M/dense_eval.h5" \
    --output "$M/bgclass.json" --no-per-class "${SIZE[@]}" > /dev/null
fi
row cap_baseline_groupvit demo-caption-22-8 baseline groupvit
for seed in $SEEDS; do row "cap_full_s$seed" demo-caption-22-8 train --mvp.seed "$seed"; done
for seed in $ABLATION_SEEDS; do
  row "cap_no_oc_s$seed" demo-caption-22-8 train --mvp.seed "$seed" --mvp.lambda_oc 0
  row "cap_no_gpr_s$seed" demo-caption-22-8 train --mvp.seed "$seed" --mvp.gpr false
done

python -P - "$M" "$SEEDS" "$ABLATION_SEEDS" <<'PY'
import json, sys
from pathlib import Path
from statistics import mean
m, seeds, ablation_seeds = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
fmt = lambda v: "    -" if v is None else f"{v:5.2f}"
KEYS = ("seen_mIoU", "unseen_mIoU", "hIoU")
def numbers(name):  # (bg_thresh, split, with background S/U/hIoU, background ignored S/U/hIoU or None)
    r = json.loads((m / f"{name}.json").read_text())
    nobg = m / f"nobg_{name}.json"
    n = json.loads(nobg.read_text()) if nobg.is_file() else None
    thr = r["eval_config"].get("bg_thresh", 0.0)
    return thr, r["protocol"]["zero_shot_split"], [r[k] for k in KEYS], [n[k] for k in KEYS] if n else None
def line(name, thr, zs, a, b):
    cells = " ".join(fmt(v) for v in a) + " | " + (" ".join(fmt(v) for v in b) if b else "")
    print(f"{name:24s} {zs:18s} {thr:>9} | {cells}")
print(f"{'row':24s} {'split':18s} bg_thresh | with background: S U hIoU | background ignored: S U hIoU")
for name in ("baseline_groupvit", "baseline_imagenet80", "full", "bgclass", "cap_baseline_groupvit"):
    thr, zs, a, b = numbers(name)
    line(name, f"{thr:g}", zs, a, b)
for kind, kind_seeds in (("cap_full", seeds), ("cap_no_oc", ablation_seeds), ("cap_no_gpr", ablation_seeds)):
    rows = [numbers(f"{kind}_s{s}") for s in kind_seeds]
    for s, (thr, zs, a, b) in zip(kind_seeds, rows):
        line(f"{kind}_s{s}", f"{thr:g}", zs, a, b)
    avg = lambda i: [mean(r[i][j] for r in rows) for j in range(3)]
    line(f"{kind} (mean)", "", rows[0][1], avg(2), avg(3))
PY
