"""Does the AP reward make a better agent? DQN agents per reward and seed, evaluated live beside the rules.

    python benchmarks/agent_reward.py --cache runs/quickstart/cache/train --eval-cache runs/quickstart/cache/tune \\
        --rnet runs/quickstart/rnet.pt --config configs/eval/synth.yaml --data data/synth-val/annotations.json \\
        --dataset synth-val --images 20 --reward gain ap --seeds 0 1 2 --budget 0.45 0.6

For each ``--reward`` and ``--seed``, ``zoomdet train`` trains a DQN agent on
the cache (``--steps`` steps, λ ``--lam``, the R-net state) into
``runs/bench/agent_reward/<reward>-s<seed>``; then one ``zoomdet evaluate``
runs every agent beside ``greedy``, ``greedy-entropy`` and ``oracle-ap`` on
the same images. Prints each agent's AP per budget, the mean and spread over
seeds per reward, and the margin over the best rule; writes the rows (with
``reward`` and ``seed``) to ``benchmarks/results/agent_reward.json``
(replacing ``--dataset``'s rows). Finished trainings are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from zoomdet.eval.results import (add_agent_args, add_dataset_args, command_line, rows_from_report, run_zoomdet,
                                      train_agents, write_results)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    add_agent_args(ap)
    ap.add_argument("--reward", nargs="+", default=["gain", "ap"], choices=["gain", "ap"])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lam", type=float, default=5.0)
    ap.add_argument("--budget", type=float, nargs="+", default=[0.45, 0.6])
    ap.add_argument("--out", default="runs/bench/agent_reward")
    args = ap.parse_args(argv)

    out = Path(args.out)
    models = train_agents({r: [f"lam:{args.lam}", f"reward:{r}"] for r in args.reward}, args.seeds, args.cache,
                          args.eval_cache, args.rnet, args.steps, out, eval_freq=2500)
    agents = {f"dqn:{m.parent.name}/best_model": rs for m, rs in models.items()}
    ev = out / f"eval-{args.dataset}"
    argv_eval = ["evaluate", "--config", args.config, "--data", args.data, "--rnet", args.rnet, "--out", str(ev),
                 "--images", str(args.images), "--budget", *map(str, args.budget),
                 "--policy", "coarse", "--policy", "fine", "--policy", "greedy", "--policy", "greedy-entropy",
                 "--policy", "oracle-ap"]
    for m in models:
        argv_eval += ["--policy", str(m)]
    run_zoomdet(argv_eval)
    report = json.loads((ev / "report.json").read_text())
    rows = rows_from_report(report, args.dataset, command=command_line())
    for r in rows:
        reward, seed = agents.get(r["policy"], (None, None))
        r["reward"], r["seed"] = reward, (seed if seed is not None else 0)
    by = {(r["policy"], r["budget"]): r for r in rows}
    print(f"\n{args.dataset}, {report['images']} images: AP x 100 (pixels_ratio)")
    for b in args.budget:
        rule = max((by[(p, b)] for p in ("greedy", "greedy-entropy")), key=lambda r: r["ap"])
        line = [f"budget {b:g}: best rule {rule['policy']} {100 * rule['ap']:.2f}"]
        for reward in args.reward:
            aps = [100 * by[(n, b)]["ap"] for n, (rw, _) in agents.items() if rw == reward]
            spread = statistics.pstdev(aps) if len(aps) > 1 else 0.0
            line.append(f"{reward}: {statistics.mean(aps):.2f} ± {spread:.2f} over {len(aps)} seeds "
                        f"({statistics.mean(aps) - 100 * rule['ap']:+.2f})")
        line.append(f"oracle-ap {100 * by[('oracle-ap', b)]['ap']:.2f}")
        print("; ".join(line))
    path = write_results("agent_reward", rows, replace={"dataset": args.dataset})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
