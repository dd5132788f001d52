#!/bin/bash
# Pretrain the encoders (and train the P picker) on one GPU machine within a wall-clock budget.
#
#   DEADLINE=480 bash release/pretrain_gpu.sh      # seconds for the whole script
#
# Synthesises the training regimes (`seismag synth --events 6000 --seed 1 --regimes train`, the
# data of docs/evaluation.md), then runs at once: each encoder of ENCODERS, and the picker from
# scratch and from its shipped weights (PICKER=0 skips it). An encoder first pretrains CALIB
# steps to measure its windows per second here (with everything else running), then pretrains
# for as many steps of BATCH windows as fit in what is left, so its learning-rate schedule runs
# to the end instead of being cut off (--max-minutes stays as a safety net). OUT gets one
# archive, pretrain_gpu.tgz, with per run the weights, history.json and the log (one file: a
# lent machine hands back only a few). Runs from a checkout; seismag's training dependencies
# must be importable (EXTRA_PYTHONPATH may point at wheels).
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; EVENTS=${EVENTS:-6000}; DEADLINE=${DEADLINE:-480}
BATCH=${BATCH:-64}; CALIB=${CALIB:-40}; LIMIT=${LIMIT:-12000}; LOAD_S=${LOAD_S:-60}
ENCODERS=${ENCODERS:-"BidirAutoregEncoder ConvDownEncoderContrastive"}; PICKER=${PICKER:-1}
WORKERS=${WORKERS:-$(nproc)}; OUT=${OUT:-/tmp/pretrain_gpu_out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
W=${WORK:-/tmp/seismag_pretrain_gpu}; rm -rf "$W"; mkdir -p "$W/out"
R=$W/out  # what comes back, packed at the end
source "$(dirname "$0")/gpu_setup.sh"

if [ "$PICKER" = 1 ]; then
  minutes=$($PY -c "print(round(max(0.5, ($(left) - 75) / 60), 2))")  # 75 s: loading, writing
  echo "picker: $minutes min each"
  for spec in scratch:1e-3 shipped:3e-4; do
    init=${spec%%:*}; lr=${spec#*:}; args=()
    [ "$init" = shipped ] && args=(--init-weights models/weights/PhaseNetPicker.safetensors)
    $PY -m seismag train-picker --data "$W/data" --out "$R/picker-$init/PhaseNetPicker.safetensors" \
        --device "$DEVICE" --minutes "$minutes" --max-traces 20000 --lr "$lr" --threads 2 \
        "${args[@]}" > "$R/picker-$init.log" 2>&1 &
  done
fi

for enc in $ENCODERS; do
  (
    $PY -m seismag pretrain "$enc" --data "$W/data" --out "$W/runs/calib-$enc" --steps "$CALIB" \
        --batch-size "$BATCH" --limit 500 --device "$DEVICE" --threads 2 --quiet \
        > "$R/calib-$enc.log" 2>&1 || { echo "$enc: calibration failed"; exit 1; }
    wps=$($PY -c "import json, sys; h = json.load(open(sys.argv[1]))['state']['history']; \
print(sorted(r['windows_per_s'] for r in h)[len(h) // 2])" "$W/runs/calib-$enc/history.json")
    left_s=$(left)
    steps=$($PY -c "print(max(50, int(($left_s - $LOAD_S) * $wps / $BATCH * 0.9)))")
    echo "$enc: $wps windows/s here; $steps steps of $BATCH in the $left_s s left"
    $PY -m seismag pretrain "$enc" --data "$W/data" --out "$R/$enc" --steps "$steps" \
        --batch-size "$BATCH" --limit "$LIMIT" --device "$DEVICE" --threads 2 --quiet \
        --max-minutes "$($PY -c "print(round(($left_s - 30) / 60, 2))")" > "$R/$enc.log" 2>&1
    echo "$enc: exit $? at $(( $(date +%s) - T0 )) s"
    rm -rf "$R/$enc/checkpoint"
  ) &
done
wait
echo "all done at $(( $(date +%s) - T0 )) s"
for f in "$R"/*.log; do echo "== $f"; tail -4 "$f"; done
for enc in $ENCODERS; do
  $PY -c "import json, sys; s = json.load(open(sys.argv[1]))['state']; \
print(sys.argv[2], s['step'], 'steps', round(s['seconds']), 's', s['stopped'], s['dev'])" \
      "$R/$enc/history.json" "$enc" || true
done
ls -la "$R"/*
tar czf "$OUT/pretrain_gpu.tgz" -C "$W" out && ls -la "$OUT"
