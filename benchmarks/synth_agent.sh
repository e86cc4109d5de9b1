#!/usr/bin/env bash
# Issue 5's measurement on the synthetic set, through the documented CLI only:
# data -> rollout caches -> R-net -> DQN agent -> live evaluation next to the baselines.
# Usage: bash benchmarks/synth_agent.sh   (from the repository root, venv active)
# Stages whose outputs exist are skipped (cache builds resume by themselves).
set -euo pipefail
STEPS=${STEPS:-30000}
[ -f data/synth-train/annotations.json ] || zoomdet data synth --out data/synth-train --images 48 --seed 0
[ -f data/synth-tune/annotations.json ]  || zoomdet data synth --out data/synth-tune --images 12 --seed 2
[ -f data/synth-val/annotations.json ]   || zoomdet data synth --out data/synth-val --images 20 --seed 1
time zoomdet cache build --config configs/eval/synth.yaml --data data/synth-train/annotations.json --images 48 --out runs/cache/synth-train
time zoomdet cache build --config configs/eval/synth.yaml --data data/synth-tune/annotations.json --images 12 --out runs/cache/synth-tune
[ -f runs/rnet/synth.pt ] || zoomdet rnet train --cache runs/cache/synth-train --val-cache runs/cache/synth-tune --out runs/rnet/synth.pt
