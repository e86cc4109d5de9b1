#!/usr/bin/env bash
# Issue 5's measurement on the synthetic set, through the documented CLI only:
# data -> rollout caches -> R-net -> DQN agent -> live evaluation next to the baselines.
# Usage: bash benchmarks/synth_agent.sh   (from the repository root, venv active)
# Stages whose outputs exist are skipped (cache builds resume by themselves).
set -euo pipefail
STEPS=${STEPS:-20000}
[ -f data/synth-train/annotations.json ] || zoomdet data synth --out data/synth-train --images 48 --seed 0
[ -f data/synth-tune/annotations.json ]  || zoomdet data synth --out data/synth-tune --images 12 --seed 2
[ -f data/synth-val/annotations.json ]   || zoomdet data synth --out data/synth-val --images 20 --seed 1
time zoomdet cache build --config configs/eval/synth.yaml --data data/synth-train/annotations.json --images 48 --out runs/cache/synth-train
time zoomdet cache build --config configs/eval/synth.yaml --data data/synth-tune/annotations.json --images 12 --out runs/cache/synth-tune
[ -f runs/rnet/synth.pt ] || zoomdet rnet train --cache runs/cache/synth-train --val-cache runs/cache/synth-tune --out runs/rnet/synth.pt
# three DQN agents, one per λ (the AP-vs-pixels trade-off of the reward), into logs/dqn/ZoomDet-v0_<n>
for LAM in 5 2 10; do
  OMP_NUM_THREADS=1 zoomdet train --algo dqn --env ZoomDet-v0 --cache runs/cache/synth-train --eval-cache runs/cache/synth-tune \
      --env-kwargs rnet:runs/rnet/synth.pt lam:$LAM -n "$STEPS" --seed 0 --eval-freq 2500
done
A=$(ls -d logs/dqn/ZoomDet-v0_* | sort -V | tail -3)
set -- $A
time zoomdet evaluate --config configs/eval/synth.yaml --data data/synth-val/annotations.json --images 20 \
    --policy coarse --policy fine --policy sahi --policy random --policy oracle --policy greedy --policy greedy-entropy \
    --policy "$1/best_model.zip" --policy "$2/best_model.zip" --policy "$3/best_model.zip" \
    --rnet runs/rnet/synth.pt --budget 0.45 0.6 0.8 --out runs/eval/synth-agent
