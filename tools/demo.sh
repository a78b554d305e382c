#!/usr/bin/env bash
# The main job end to end on generated data: generate the shapes set (the easy kind by default;
# DIFFICULTY=hard for the benchmark's) -> train a small Faster R-CNN from scratch -> train an NCE+
# EBM head on the frozen detector -> draw the first val image before/after -> test once, printing
# COCO AP of the detector's boxes and of the refined boxes side by side.
# About 11 minutes on 2 CPU cores (10 min 28 s measured, 11 min 0 s by `make demo` in a fresh clone). Longer runs: DET_ITERS=... EBM_ITERS=... NUM_TRAIN=...
# Both trainings are seeded (SEED, default 0; mmengine's randomness.seed), so a rerun on the same
# kind of machine repeats the figures; SEED=<n> WORK=<a new dir> draws another run (a step whose
# output exists is skipped, whatever the seed).
# EBM variants: EBM_DIR=<name under WORK> EBM_OPTS="model.ebm_head.reduced_channels=16" (applied
# to the EBM's training and test); DET_CFG / EBM_CFG: other configs (the Cascade R-CNN pair);
# RUN_TEST=0 stops after training, EBM_ITERS=0 after the detector.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA=${DATA:-data/shapes}
WORK=${WORK:-work_dirs/demo}
NUM_TRAIN=${NUM_TRAIN:-400}
NUM_VAL=${NUM_VAL:-100}
DIFFICULTY=${DIFFICULTY:-easy}
DET_ITERS=${DET_ITERS:-900}
SEED=${SEED:-0}
EBM_ITERS=${EBM_ITERS:-300}
EBM_DIR=${EBM_DIR:-ebm}
EBM_OPTS=${EBM_OPTS:-}
RUN_TEST=${RUN_TEST:-1}
DET_CFG=${DET_CFG:-configs/faster-rcnn_r18_fpn_shapes.py}
EBM_CFG=${EBM_CFG:-configs/faster-rcnn_r18_fpn_ebm-nceplus_shapes.py}
for name in SEED DET_ITERS EBM_ITERS NUM_TRAIN NUM_VAL; do
  case "${!name}" in
    ''|*[!0-9]*) echo "[demo] $name must be a non-negative integer, got '${!name}'" >&2; exit 2 ;;
  esac
done
case "$RUN_TEST" in
  0|1) ;;
  *) echo "[demo] RUN_TEST must be 0 or 1, got '$RUN_TEST'" >&2; exit 2 ;;
esac
# training skips validation (mmengine's iteration loop validates at the last iteration otherwise):
# the test step below evaluates once, the detector's and the refined boxes together
no_val="val_cfg=None val_dataloader=None val_evaluator=None"
train_data="train_dataloader.dataset.data_root=$DATA/ randomness.seed=$SEED"

if [ ! -f "$DATA/annotations/instances_val.json" ]; then
  echo "[demo] generating $NUM_TRAIN + $NUM_VAL $DIFFICULTY images in $DATA"
  $PYTHON -m ebm_det.synthetic.coco_shapes --out "$DATA" --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" --size 256 --seed 0 --difficulty "$DIFFICULTY"
else
  echo "[demo] data: reusing $DATA as generated (NUM_TRAIN, NUM_VAL, DIFFICULTY apply only when it is generated; delete it to generate again)"
fi

if [ ! -f "$WORK/det/last_checkpoint" ]; then
  echo "[demo] training the detector ($DET_ITERS iterations)"
  $PYTHON tools/train.py $DET_CFG --work-dir "$WORK/det" --cfg-options $train_data \
    train_cfg.max_iters=$DET_ITERS \
    $no_val default_hooks.checkpoint.interval=$DET_ITERS \
    "param_scheduler.1.end=$DET_ITERS" "param_scheduler.1.milestones=[$((DET_ITERS * 3 / 4)),$((DET_ITERS * 9 / 10))]"
else
  echo "[demo] detector: reusing $(cat "$WORK/det/last_checkpoint") (delete $WORK/det to train again)"
fi
DET_CKPT=$(cat "$WORK/det/last_checkpoint")
[ "$EBM_ITERS" -gt 0 ] || exit 0

if [ ! -f "$WORK/$EBM_DIR/last_checkpoint" ]; then
  echo "[demo] training the NCE+ EBM head on the frozen detector ($EBM_ITERS iterations)"
  $PYTHON tools/train.py $EBM_CFG --work-dir "$WORK/$EBM_DIR" --cfg-options $train_data model.detector_checkpoint="$DET_CKPT" \
    train_cfg.max_iters=$EBM_ITERS $no_val default_hooks.checkpoint.interval=$EBM_ITERS \
    "param_scheduler.0.end=$EBM_ITERS" "param_scheduler.0.milestones=[$((EBM_ITERS * 2 / 3)),$((EBM_ITERS * 5 / 6))]" \
    $EBM_OPTS
else
  echo "[demo] EBM head: reusing $(cat "$WORK/$EBM_DIR/last_checkpoint") (delete $WORK/$EBM_DIR to train again)"
fi
[ "$RUN_TEST" = 1 ] || exit 0
EBM_CKPT=$(cat "$WORK/$EBM_DIR/last_checkpoint")

echo "[demo] drawing the first val image before/after refinement (log: $WORK/vis/log.txt)"
mkdir -p "$WORK/vis"
$PYTHON tools/visualize_refinement.py $EBM_CFG "$EBM_CKPT" --images 1 --zoom 3 --score-thr 0.5 --out-dir "$WORK/vis" \
  --cfg-options val_dataloader.dataset.data_root=$DATA/ $EBM_OPTS > "$WORK/vis/log.txt" 2>&1 \
  || { tail -20 "$WORK/vis/log.txt"; exit 1; }
echo "[demo] pictures: $(ls "$WORK"/vis/*.png | tr '\n' ' ')"

echo "[demo] testing: detector boxes vs refined boxes, one run"
$PYTHON tools/test.py $EBM_CFG "$EBM_CKPT" --work-dir "$WORK/test" \
  --out-json "$WORK/metrics.json" --cfg-options test_dataloader.dataset.data_root=$DATA/ \
  test_evaluator.0.ann_file=$DATA/annotations/instances_val.json \
  test_evaluator.1.metric.ann_file=$DATA/annotations/instances_val.json $EBM_OPTS
