#!/usr/bin/env bash
# benchmarks/latency.py on a GPU: the per-stage tables of the README's "Latency that follows pixels", with the
# detector on CUDA (rows with "device": "cuda:0" in benchmarks/results/latency.json, datasets *-gpu).
# Usage, from the repository root with a CUDA torch:  bash benchmarks/gpu_latency.sh
#   HITUAV (default ../shared/data/hit-uav) and AIRBUS (default ../shared/data/airbus-aircraft) point at the data;
#   the synthetic images are made first (zoomdet data synth, seed 1, as in the README) when data/synth-val is absent.
#   PYTHON (default python) runs the scripts; OUT (default runs/bench/latency) holds the reports.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
HITUAV=${HITUAV:-../shared/data/hit-uav}
AIRBUS=${AIRBUS:-../shared/data/airbus-aircraft}
OUT=${OUT:-runs/bench/latency}
[ -f data/synth-val/annotations.json ] || $PYTHON -m zoomdet.cli data synth --out data/synth-val --images 50 --seed 1
lat() { $PYTHON benchmarks/latency.py --device cuda --out "$OUT" --policy coarse --policy fine --policy greedy-entropy "$@"; }
lat --config configs/eval/hituav.yaml --data "$HITUAV/test.json" --dataset hituav-test-gpu --images 100 \
    --budget 0.5 --proposal-density 0 3500 --proposal-min 300
lat --config configs/eval/synth.yaml --data data/synth-val/annotations.json --dataset synth-val-gpu --images 20 \
    --budget 0.45 --proposal-density 0 1000 --proposal-min 100
lat --config configs/eval/airbus.yaml --data "$AIRBUS/test.json" --dataset airbus-test-gpu \
    --budget 0.1 0.15 --proposal-density 0
