#!/usr/bin/env bash
# The agent at scale on one dataset, through the documented CLI only: rollout caches (composed unless FINE says)
# of the train and val splits (through Ray: RAY_ADDRESS=auto, or ray://head:10001, runs the same builds on a
# cluster) -> R-net -> DQN agents, 3 seeds (benchmarks/agents.py: the AP reward, a budget per episode, context
# planes) -> live evaluation on the test split beside the rules.
# Usage: [VAR=... ] bash benchmarks/agent_pipeline.sh [more benchmarks/agents.py options, e.g. --ablations]
#   (from the repository root, venv active). Every stage resumes; OUT holds the work. The variables, with their
#   HIT-UAV defaults (benchmarks/hituav_agent.sh), and the synthetic set (benchmarks/synth_agents.sh):
#   CONFIG=configs/eval/hituav.yaml  TRAIN=$D/train.json  VAL=$D/val.json  TEST=$D/test.json  (D=../shared/data/hit-uav)
#   DATASET=hituav-test  OUT=runs/bench/hituav  BUDGETS="0.35 0.45 0.6"  TRAIN_IMAGES=0 (0 = all)
#   FINE=composed (the caches' fine detections: composed, composed-full or exact; zoomdet cache build --fine)
set -euo pipefail
D=../shared/data/hit-uav
CONFIG=${CONFIG:-configs/eval/hituav.yaml}
TRAIN=${TRAIN:-$D/train.json}; VAL=${VAL:-$D/val.json}; TEST=${TEST:-$D/test.json}
DATASET=${DATASET:-hituav-test}
OUT=${OUT:-runs/bench/hituav}
BUDGETS=${BUDGETS:-0.35 0.45 0.6}
TRAIN_IMAGES=${TRAIN_IMAGES:-0}
FINE=${FINE:-composed}
RAY=(); [ -n "${RAY_ADDRESS:-}" ] && RAY=(--ray-address "$RAY_ADDRESS")
time zoomdet cache build --config "$CONFIG" --data "$TRAIN" --images "$TRAIN_IMAGES" --fine "$FINE" --out "$OUT/cache-train" "${RAY[@]}"
time zoomdet cache build --config "$CONFIG" --data "$VAL" --images 0 --fine "$FINE" --out "$OUT/cache-val" "${RAY[@]}"
[ -f "$OUT/rnet.pt" ] || zoomdet rnet train --cache "$OUT/cache-train" --val-cache "$OUT/cache-val" --out "$OUT/rnet.pt"
# shellcheck disable=SC2086  # BUDGETS is a list
python benchmarks/agents.py --config "$CONFIG" --data "$TEST" --dataset "$DATASET" \
    --cache "$OUT/cache-train" --eval-cache "$OUT/cache-val" --rnet "$OUT/rnet.pt" --seeds 0 1 2 \
    --budget $BUDGETS --out "$OUT/agents" "$@"
