#!/bin/bash
# Synthesise the training regimes and train several models at once on one machine (a GPU one).
#
#   MIN=7 bash release/train_parallel.sh          # or DEADLINE=480: the budget is what is left
#   python release/train_defaults.py --data DATA --models M... --from-runs $WORK/runs ...
#
# Each model trains in its own process with the recipe train_defaults.py uses on CPUs
# (lr 3e-4, batch 64), for MIN minutes of wall clock. The dataset is the one docs/data.md names
# (`seismag synth --events 6000 --seed 1 --regimes train`; EVENTS and REGIMES choose another,
# e.g. EVENTS=8000 REGIMES=empirical,site_range): its metadata.csv md5 is printed; it
# matches another copy only under the same numpy and scipy (otherwise compare the starting
# weights' dev MAE, which each --init-weights run logs; docs/data.md). INIT=shipped starts each model from
# its shipped weights (models/weights/MODEL.safetensors) instead of from scratch. An entry of
# MODELS may set its own start and learning rate, so one model can train several ways at once:
#   MODELS="ViTMag,init=scratch,lr=1e-4 ViTMag,init=shipped,lr=3e-4" DEADLINE=480 bash ...
# runs as ViTMag-scratch-1e-4 and ViTMag-shipped-3e-4. Per run, OUT/RUN.tgz holds the best
# weights, history.json and the log. Runs from a checkout; PYTHON
# and seismag's training dependencies must be importable (PYTHONPATH may point at wheels).
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; EVENTS=${EVENTS:-6000}; MIN=${MIN:-7}
WORKERS=${WORKERS:-$(nproc)}; OUT=${OUT:-/tmp/train_parallel_out}; mkdir -p "$OUT"
MODELS=${MODELS:-"AMAG_v2 ViTMag UMambaMagV1 UMambaMagV2 PhaseNetMag EQTransformerMag"}
T0=$(date +%s)
W=${WORK:-/tmp/seismag_train_parallel}; rm -rf "$W"
source "$(dirname "$0")/gpu_setup.sh"
if [ -n "${DEADLINE:-}" ]; then  # budget = what is left before DEADLINE s, less a margin
  MIN=$($PY -c "print(round(max(1.0, ($DEADLINE - ($(date +%s) - $T0)) / 60 - 0.7), 2))")
fi
echo "training budget $MIN min per model"
RUNS=()
for spec in $MODELS; do  # NAME[,init=shipped|scratch][,lr=X]
  IFS=, read -r m opts <<< "$spec"
  init=${INIT:-scratch}; lr=${LR:-3e-4}
  for o in ${opts//,/ }; do
    case $o in init=shipped|init=scratch) init=${o#init=} ;; lr=*) lr=${o#lr=} ;;
      *) echo "bad option $o in $spec (init=shipped|scratch, lr=X)"; exit 2 ;; esac
  done
  run=$m; [ -n "$opts" ] && run=$m-$init-$lr
  RUNS+=("$run")
  args=(); [ "$init" = shipped ] && args=(--init-weights "models/weights/$m.safetensors")
  echo "$run: $m, start $init, lr $lr"
  $PY -m seismag train "$m" --data "$W/data" --out "$W/runs/$run" --device "$DEVICE" "${args[@]}" \
      --max-minutes "$MIN" --lr "$lr" --batch-size 64 --threads 2 --quiet > "$W/runs/$run.log" 2>&1 &
done
wait
echo "train done at $(( $(date +%s) - T0 )) s"
for r in "${RUNS[@]}"; do
  echo "== $r"; tail -3 "$W/runs/$r.log"
  $PY -c "import json, sys; [print(e) for e in json.load(open(sys.argv[1]))['state']['history']]" \
      "$W/runs/$r/history.json" || true
  tar czf "$OUT/$r.tgz" -C "$W/runs" --exclude="$r/checkpoint" "$r" "$r.log"
done
ls -la "$OUT"
