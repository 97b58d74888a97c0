#!/usr/bin/env bash
# `make demo`: compile a model, build the firmware, run it on QEMU (or the board given
# by BOARD=...), check every output against TFLM and print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
board="${BOARD:-qemu}"
shared="${MICROTILE_SHARED:-../shared}"
mkdir -p build
if [ -f "$shared/models/mlperf_tiny/kws_ref_model.tflite" ]; then
  # The MLPerf Tiny keyword-spotting model on real labelled inputs.
  exec .venv/bin/microtile run "$shared/models/mlperf_tiny/kws_ref_model.tflite" --board "$board" \
    --labels "$shared/datasets/kws01/y_labels.csv" --limit 20 --json build/demo.json
fi
# Without the shared data: the project's own DS-CNN keyword-spotting model.
.venv/bin/python -m microtile_models.build build/zoo --only ds_cnn_kws
exec .venv/bin/microtile run build/zoo/ds_cnn_kws.tflite --board "$board" --random 5 --json build/demo.json
