#!/usr/bin/env bash
# The agent at scale on the synthetic 2048x1536 set: 100 train images (seed 3) and 20 val images (seed 4), neither
# seen by the embedded detector (trained on seed 0), for the caches, the R-net and the agents; the 50 held-out
# images of data/synth-val (seed 1) for the test. Stages: benchmarks/agent_pipeline.sh.
# Usage: bash benchmarks/synth_agents.sh [more benchmarks/agents.py options]   (repository root, venv active)
#   CONFIG=configs/eval/synth_agent.yaml DATASET=synth-val-29win OUT=runs/bench/synth-29win bash benchmarks/synth_agents.sh ...
#   runs it with 29 candidate windows (a 4x4 grid added), so that one window fits a budget of 0.35
set -euo pipefail
[ -f data/synth-agent-train/annotations.json ] || zoomdet data synth --out data/synth-agent-train --images 100 --seed 3
[ -f data/synth-agent-val/annotations.json ]   || zoomdet data synth --out data/synth-agent-val --images 20 --seed 4
[ -f data/synth-val/annotations.json ]         || zoomdet data synth --out data/synth-val --images 50 --seed 1
# the README's tour makes a 20-image data/synth-val: the test needs all 50
n=$(python -c "import json; print(len(json.load(open('data/synth-val/annotations.json'))['images']))")
if [ "$n" != 50 ]; then
    echo "data/synth-val has $n images, the test needs the 50 of: zoomdet data synth --out data/synth-val --images 50 --seed 1" >&2
    exit 2
fi
CONFIG=${CONFIG:-configs/eval/synth.yaml} TRAIN=data/synth-agent-train/annotations.json VAL=data/synth-agent-val/annotations.json \
TEST=data/synth-val/annotations.json DATASET=${DATASET:-synth-val} OUT=${OUT:-runs/bench/synth} BUDGETS="0.35 0.45 0.6" \
    exec bash "$(dirname "$0")/agent_pipeline.sh" "$@"
