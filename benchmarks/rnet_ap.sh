#!/usr/bin/env bash
# The R-net fitted to the metric (RNetConfig target: ap) against the paper's gain R-net, on the synthetic set:
# three seeds of `zoomdet rnet train --set target=ap` on the caches of `bash benchmarks/synth_agents.sh`
# (100 train images, 20 val images), each driving `greedy` on the 50 held-out images of data/synth-val at the
# issue's budgets (rows: benchmarks/results/rnet_ap.json, datasets synth-val-rnet-ap-s<seed>), and every
# R-net's validation ranking of the AP points each window adds, the paper's R-net retrained beside them
# (rows: benchmarks/results/rnet_ap_val.json).
# Usage: bash benchmarks/rnet_ap.sh   (repository root, venv active; run benchmarks/synth_agents.sh first)
set -euo pipefail
OUT=${OUT:-runs/bench/synth}
SEEDS=${SEEDS:-0 1 2}
for f in "$OUT/cache-train/manifest.json" "$OUT/cache-val/manifest.json" data/synth-val/annotations.json; do
    [ -f "$f" ] || { echo "missing $f: run bash benchmarks/synth_agents.sh first" >&2; exit 2; }
done
[ -f "$OUT/rnet-gain-s0.pt" ] || zoomdet rnet train --cache "$OUT/cache-train" --val-cache "$OUT/cache-val" \
    --out "$OUT/rnet-gain-s0.pt" --no-progress
for SEED in $SEEDS; do
    [ -f "$OUT/rnet-ap-s$SEED.pt" ] || zoomdet rnet train --cache "$OUT/cache-train" --val-cache "$OUT/cache-val" \
        --out "$OUT/rnet-ap-s$SEED.pt" --set target=ap --set seed="$SEED" --no-progress
    python benchmarks/policies.py --config configs/eval/synth.yaml --data data/synth-val/annotations.json \
        --dataset "synth-val-rnet-ap-s$SEED" --policy coarse --policy fine --policy greedy --budget 0.35 0.45 0.6 \
        --rnet "$OUT/rnet-ap-s$SEED.pt" --results rnet_ap
done
python - "$OUT" $SEEDS <<'PY'
import datetime, json, sys
from pathlib import Path
from zoomdet.eval.results import write_results
out, seeds = Path(sys.argv[1]), sys.argv[2:]
rows = []
for name in ["rnet-gain-s0"] + [f"rnet-ap-s{s}" for s in seeds]:
    m = json.loads((out / f"{name}.pt.json").read_text())["metrics"]
    rows.append({"dataset": "synth-agent-val", "images": m["val_images"], "policy": name, "target": m["target"],
                 "seed": int(name.rsplit("-s", 1)[1]), "windows": m["val_windows"],
                 **{k: m[k] for k in ("val_spearman", "val_pearson", "val_ap_spearman", "val_ap_pearson",
                                      "entropy_val_ap_spearman", "entropy_val_ap_pearson", "train_images", "train_labels", "train_l2",
                                      "label_std")},
                 "command": "bash benchmarks/rnet_ap.sh", "date": datetime.date.today().isoformat()})
    print(f"{name:14s} target {m['target']:4s}  validation Spearman with the AP points of each window "
          f"{m['val_ap_spearman']:.3f} (entropy {m['entropy_val_ap_spearman']:.3f})")
print("wrote", write_results("rnet_ap_val", rows, replace={"dataset": "synth-agent-val"},
                             required=("dataset", "images", "policy", "seed", "command", "date")))
PY
