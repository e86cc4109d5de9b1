#!/usr/bin/env bash
# The agent on real data (HIT-UAV, ../shared/data/hit-uav), at scale, through the documented CLI only:
# composed rollout caches of the whole train and val splits (through Ray: RAY_ADDRESS=auto, or ray://head:10001,
# runs the same builds on a cluster) -> R-net -> DQN agents, 3 seeds (benchmarks/agents.py: the AP reward, a budget
# per episode, context planes) -> live evaluation on all 579 test images beside the rules.
# Usage: bash benchmarks/hituav_agent.sh [more benchmarks/agents.py options, e.g. --ablations --images 200]
#   (from the repository root, venv active). Every stage resumes; OUT (default runs/bench/hituav) holds the work.
set -euo pipefail
D=../shared/data/hit-uav
OUT=${OUT:-runs/bench/hituav}
RAY=(); [ -n "${RAY_ADDRESS:-}" ] && RAY=(--ray-address "$RAY_ADDRESS")
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/train.json --images 0 --fine composed --out "$OUT/cache-train" "${RAY[@]}"
time zoomdet cache build --config configs/eval/hituav.yaml --data $D/val.json --images 0 --fine composed --out "$OUT/cache-val" "${RAY[@]}"
[ -f "$OUT/rnet.pt" ] || zoomdet rnet train --cache "$OUT/cache-train" --val-cache "$OUT/cache-val" --out "$OUT/rnet.pt"
python benchmarks/agents.py --config configs/eval/hituav.yaml --data $D/test.json --dataset hituav-test \
    --cache "$OUT/cache-train" --eval-cache "$OUT/cache-val" --rnet "$OUT/rnet.pt" --seeds 0 1 2 \
    --budget 0.35 0.45 0.6 --out "$OUT/agents" "$@"
