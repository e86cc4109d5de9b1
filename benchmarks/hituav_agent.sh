#!/usr/bin/env bash
# The agent on real data (HIT-UAV, ../shared/data/hit-uav), through the documented CLI only:
# rollout caches (train, val) -> R-net -> DQN agent (best model on val) -> live evaluation on the test split.
# Usage: bash benchmarks/hituav_agent.sh   (from the repository root, venv active). Stages resume.
set -euo pipefail
D=../shared/data/hit-uav
TEST_IMAGES=${TEST_IMAGES:-50}
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/train.json --images 160 --out runs/cache/hituav-train
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/val.json --images 40 --out runs/cache/hituav-val
[ -f runs/rnet/hituav.pt ] || zoomdet rnet train --cache runs/cache/hituav-train --val-cache runs/cache/hituav-val --out runs/rnet/hituav.pt
# two DQN agents, λ = 1 and 0.25 (HIT-UAV's window gains are small), into logs-hituav/dqn/ZoomDet-v0_<n>
if ! ls logs-hituav/dqn/ZoomDet-v0_2/best_model.zip >/dev/null 2>&1; then
  for LAM in 1 0.25; do
    OMP_NUM_THREADS=1 zoomdet train --algo dqn --env ZoomDet-v0 --cache runs/cache/hituav-train --eval-cache runs/cache/hituav-val \
        --env-kwargs rnet:runs/rnet/hituav.pt lam:$LAM -n 20000 --seed 0 --eval-freq 2500 -f logs-hituav
  done
fi
time zoomdet evaluate --config configs/eval/hituav.yaml --data $D/test.json --images "$TEST_IMAGES" \
    --policy coarse --policy fine --policy greedy \
    --policy logs-hituav/dqn/ZoomDet-v0_1/best_model.zip --policy logs-hituav/dqn/ZoomDet-v0_2/best_model.zip \
    --rnet runs/rnet/hituav.pt --budget 0.5 --out runs/eval/hituav-agent
