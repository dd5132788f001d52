#!/usr/bin/env bash
# Train the P picker network and ship it: the weights to models/weights/, the ONNX file the
# server loads (--picker phasenet) to serving/default_picker/. The shipped picker was made with
#   bash release/ship_picker.sh /work/data/regimes_train 12
# on 2 CPU cores, DATA from `seismag synth --out DATA --events 6000 --seed 1
# --regimes wna,two_corner,broad` (docs/evaluation.md), nothing else running.
set -euo pipefail
DATA=${1:?usage: bash release/ship_picker.sh DATA [MINUTES]}
MINUTES=${2:-12}
cd "$(dirname "$0")/.."
seismag train-picker --data "$DATA" --minutes "$MINUTES" --threads 2 \
    --out runs/picker/PhaseNetPicker.safetensors
cp runs/picker/PhaseNetPicker.safetensors models/weights/PhaseNetPicker.safetensors
seismag export-picker --out serving/default_picker/PhaseNetPicker.onnx
