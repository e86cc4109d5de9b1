#!/usr/bin/env bash
# The agent on real data (HIT-UAV, ../shared/data/hit-uav), through the documented CLI only:
# rollout caches (train, val) -> R-net -> DQN agent (best model on val) -> live evaluation on the test split.
# Usage: bash benchmarks/hituav_agent.sh   (from the repository root, venv active). Stages resume.
set -euo pipefail
D=../shared/data/hit-uav
TEST_IMAGES=${TEST_IMAGES:-300}
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/train.json --images 160 --out runs/cache/hituav-train
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/val.json --images 40 --out runs/cache/hituav-val
[ -f runs/rnet/hituav.pt ] || zoomdet rnet train --cache runs/cache/hituav-train --val-cache runs/cache/hituav-val --out runs/rnet/hituav.pt
if ! ls logs-hituav/dqn/ZoomDet-v0_*/ZoomDet-v0.zip >/dev/null 2>&1; then
  OMP_NUM_THREADS=1 zoomdet train --algo dqn --env ZoomDet-v0 --cache runs/cache/hituav-train --eval-cache runs/cache/hituav-val \
      --env-kwargs rnet:runs/rnet/hituav.pt lam:1 -n 20000 --seed 0 --eval-freq 2500 -f logs-hituav
fi
AGENT=$(ls -d logs-hituav/dqn/ZoomDet-v0_* | sort -V | tail -1)/best_model.zip
time zoomdet evaluate --config configs/eval/hituav.yaml --data $D/test.json --images "$TEST_IMAGES" \
    --policy coarse --policy fine --policy oracle --policy greedy --policy greedy-entropy --policy "$AGENT" \
    --rnet runs/rnet/hituav.pt --budget 0.5 0.75 --out runs/eval/hituav-agent
