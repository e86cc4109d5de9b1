#!/usr/bin/env bash
# The agent on real data (HIT-UAV, ../shared/data/hit-uav), at scale: composed caches of the whole train and val
# splits -> R-net -> DQN agents, 3 seeds -> live evaluation on all 579 test images beside the rules.
# Usage: bash benchmarks/hituav_agent.sh [more benchmarks/agents.py options, e.g. --ablations --images 200]
#   (from the repository root, venv active). Every stage resumes; OUT (default runs/bench/hituav-agent) holds the work;
#   RAY_ADDRESS runs the cache builds on a cluster. The stages: benchmarks/agent_pipeline.sh.
# The config adds a 4x4 grid of smaller windows to the paper's 13, so a budget of 0.35 has windows that fit.
export CONFIG=${CONFIG:-configs/eval/hituav_agent.yaml} OUT=${OUT:-runs/bench/hituav-agent}
exec bash "$(dirname "$0")/agent_pipeline.sh" "$@"
