"""Agents against the rules: DQN agents per variant and seed, trained on a rollout cache, evaluated live.

    python benchmarks/agents.py --config configs/eval/hituav.yaml --data ../shared/data/hit-uav/test.json \\
        --dataset hituav-test --cache runs/bench/hituav/cache-train --eval-cache runs/bench/hituav/cache-val \\
        --rnet runs/bench/hituav/rnet.pt --seeds 0 1 2 --budget 0.35 0.45 0.6 --variant qnet-ap

A *variant* is a named set of environment options (``ZoomEnvConfig`` fields, as
``zoomdet train --env-kwargs`` takes them) and, prefixed ``dqn.``, DQN
hyperparameters (``zoomdet train --hyperparams``). ``--variant NAME`` picks one of
:data:`VARIANTS`; ``--variant NAME=key:value,key:value`` defines a new one;
``--ablations`` adds the paper's ablations (the Q-net on the entropy state
"ER+Qnet", the paper's gain reward, no random budgets, no context planes, a
λ sweep). For each variant and ``--seed``, ``zoomdet train`` trains a DQN
agent (``--steps`` steps) into ``<out>/<variant>-s<seed>``, its best model
chosen on ``--eval-cache``; then one ``zoomdet evaluate`` runs every agent
beside ``coarse``, ``fine``, ``greedy`` (GS+Rnet), ``greedy-entropy`` and,
with ``--oracle``, ``oracle-ap`` on the same images and budgets. Each agent
is trained once for all budgets: variants with ``budget_range`` draw a
budget per episode, so one agent answers any per-request budget. With
``--ensemble`` the evaluation also runs, per variant, one policy on the mean
Q-values of all its seeds (``a.zip+b.zip+c.zip``; rows ``NAME-ensemble``);
``--ensemble-size K`` makes it one policy per K consecutive seeds instead, so
an ensemble of K nets has seeds of its own (the rows' ``seed`` is the group's
place, ``seeds`` its members) and gets a mean and a spread like any variant.
``--save-freq N`` keeps each agent's checkpoint every N steps under
``<out>/<variant>-s<seed>/checkpoints``, to play each one later on a rollout
cache (``benchmarks/cache_policies.py --agent NAME=PATH``).

Prints the table ``benchmarks/tables.py --agents`` prints: per budget, each
variant's AP (mean ± population std over seeds), its margin over the best
rule, and the share of images where it zoomed at all (a stop-at-once agent
zooms on none); writes the rows (with ``variant``,
``seed`` and ``env_kwargs``) to ``benchmarks/results/<--results>.json``,
replacing ``--dataset``'s rows. Finished trainings and evaluations are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoomdet.agents.train import RECIPE  # noqa: E402

CONTEXT = "extra_channels:[entropy,scores,small,budget]"
VARIANTS = {
    # the main agent: the metric as reward (AP points, no pixel price: the budget is the price), a budget drawn
    # per episode, context planes; the agent alone decides when to stop (stop_gain 0)
    "qnet-ap": f"reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",
    # ablations, each one change from qnet-ap
    "qnet-gain": f"reward:gain,lam:0,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",  # the paper's reward
    # the dataset's AP, other images at their coarse pass, instead of the image's own (zoomdet.eval.coco_eval.PoolAP)
    "qnet-dataset-ap": f"reward:dataset-ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",
    "er-qnet": f"state:entropy,reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",  # ER+Qnet
    "qnet-ap-nocontext": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7]",  # the paper's state only
    "qnet-ap-fixed": f"reward:ap,lam:0,stop_gain:0,max_pixels_ratio:0.6,{CONTEXT}",  # one budget in training
    "qnet-ap-lam1": f"reward:ap,lam:1,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",  # λ sweep
    "qnet-ap-lam5": f"reward:ap,lam:5,stop_gain:0,budget_range:[0.3,0.7],{CONTEXT}",
    # qnet-ap with the per-window feature Q-net (one MLP over what each window holds) instead of the map's
    "qnet-win": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true",
    "qnet-win-dataset-ap": "reward:dataset-ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true",
    # qnet-win with each window's sums per unit of cost as inputs too (greedy's per-pixel ranking is one weight)
    "qnet-win-density": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,window_extras:[density]",
    # qnet-win-density started from greedy-entropy's demonstrations and kept near them by DQfD's losses
    # (zoomdet.agents.demos); its best model may be the pretrained net (evaluated before the first step)
    "qnet-dqfd": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,window_extras:[density],"
                 "dqn.demo_rule:greedy-entropy",
    # qnet-dqfd with the episode terminated, not truncated, when no window fits the budget (ZoomEnvConfig.exhausted)
    "qnet-dqfd-term": ",".join(RECIPE),  # zoomdet.agents.train.RECIPE, the recipe zoomdet quickstart trains
    # qnet-dqfd-term with each class's entropy and score mass per unit of cost as inputs (AP is a mean over classes)
    "qnet-dqfd-term-cls": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                          "window_extras:[density,classes],exhausted:terminate,dqn.demo_rule:greedy-entropy",
    # qnet-dqfd-term with each window's centre as an input (oblique frames: far objects sit at the top, small)
    "qnet-dqfd-term-pos": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                          "window_extras:[density,position],exhausted:terminate,dqn.demo_rule:greedy-entropy",
    # qnet-dqfd-term trained for the fused merge scored by both passes (ZoomEnvConfig.merge; evaluate it with a
    # config whose zoom.merge is the same, e.g. configs/eval/hituav_ft_agent_fuse_mean.yaml)
    "qnet-dqfd-term-fuse": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                           "window_extras:[density],exhausted:terminate,dqn.demo_rule:greedy-entropy,"
                           "merge:{method: fuse, fuse_score: mean}",
    # qnet-dqfd-term learning from the rule corrected by the training cache's ground truth (demo_rule oracle-ap:
    # the window that adds the most AP, the rule's ranking breaking ties) instead of the rule itself
    "qnet-dqfo-term": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,window_extras:[density],"
                      "exhausted:terminate,dqn.demo_rule:oracle-ap",
    # qnet-dqfd-term on the entropy map instead of the R-net's: the engine refines each chosen window on the policy's
    # map (paper Eq. 6), and greedy-entropy refines on the entropy map; on the R-net map the rule's own windows
    # shift elsewhere (the window features' gain column is then the entropy map too)
    "qnet-dqfd-term-ent": "state:entropy,reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                          "window_extras:[density],exhausted:terminate,dqn.demo_rule:greedy-entropy",
    "qnet-win-density-term": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                             "window_extras:[density],exhausted:terminate",  # the same without demonstrations
    # qnet-dqfd-term (and its class-column form) with Double DQN's TD target (MaskableDQN double_q): the next
    # action the online net's, valued by the target net, so a noisy per-image reward is not maximised over
    "qnet-dqfd-term-double": ",".join(RECIPE) + ",dqn.double_q:true",
    "qnet-dqfd-term-cls-double": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                                 "window_extras:[density,classes],exhausted:terminate,dqn.demo_rule:greedy-entropy,"
                                 "dqn.double_q:true",
    # qnet-dqfd-term-cls learning from greedy (the R-net map's rule) instead of greedy-entropy: on the synthetic
    # set, where the R-net ranks windows well, greedy returns more per image on the train and val caches
    "qnet-dqfd-term-cls-gdemo": "reward:ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                                "window_extras:[density,classes],exhausted:terminate,dqn.demo_rule:greedy",
    # qnet-dqfd-term without discounting (gamma 1 instead of configs/agents/dqn.yml's 0.9): an episode's objective
    # is the sum of its AP changes, and with 0.9 a window's gain five steps on counts 0.59 of one taken now
    "qnet-dqfd-term-g1": ",".join(RECIPE) + ",dqn.gamma:1.0",
    # qnet-dqfd-term rewarded (and its checkpoint chosen) by the change of the cache's COCO AP, the test's metric
    "qnet-dqfd-term-dsap": "reward:dataset-ap,lam:0,stop_gain:0,budget_range:[0.3,0.7],window_features:true,"
                           "window_extras:[density],exhausted:terminate,dqn.demo_rule:greedy-entropy",
}
ABLATIONS = ["qnet-gain", "qnet-dataset-ap", "er-qnet", "qnet-ap-nocontext", "qnet-ap-fixed", "qnet-ap-lam1", "qnet-ap-lam5"]
RULES = ("greedy", "greedy-entropy")


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``NAME`` (from :data:`VARIANTS`) or ``NAME=key:value,...`` -> (name, ``--env-kwargs`` items)."""
    name, _, body = spec.partition("=")
    if not body:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)} or NAME=key:value,...")
        body = VARIANTS[name]
    items, depth, cur = [], 0, ""
    for ch in body:  # split on commas outside [...] and {...}
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return name, [i.strip() for i in items if i.strip()]


def demonstrator_notes(specs: dict[str, list[str]], greedy_stop: float) -> list[str]:
    """One note per variant whose demonstrator stops otherwise than the eval config's live rule.

    ``zoomdet train`` knows no eval config, so its rule demonstrations stop at ``DemoConfig.stop_gain`` (0.1,
    HIT-UAV's ``greedy_stop``) unless ``dqn.demo_stop_gain`` says otherwise; a config whose rules spend the whole
    budget (``policies.greedy_stop: 0``, the Airbus configs) then teaches the agent to stop where the rule it is
    compared with goes on. ``specs``: variant name -> its items (:func:`parse_variant`)."""
    from zoomdet.agents.demos import DemoConfig
    from zoomdet.agents.train import parse_key_values
    from zoomdet.eval.results import split_variant

    notes = []
    for name, items in specs.items():
        demo = DemoConfig.pop_from(parse_key_values(split_variant(items)[1]))
        if demo is None:
            continue
        stop = demo.stop_gain
        if stop != greedy_stop:
            notes.append(f"variant {name}: its demonstrator stops under a gain of {stop:g} where the config's rules "
                         f"stop under {greedy_stop:g} (policies.greedy_stop); add dqn.demo_stop_gain:{greedy_stop:g} "
                         f"to demonstrate the rule as it runs live")
    return notes


def merge_for_config(specs: dict[str, list[str]], config_merge, cache_merge, apply: bool
                     ) -> tuple[dict[str, list[str]], list[str]]:
    """Train each variant for the merge its evaluation uses.

    The environment merges as the training cache was built (its ``zoom.merge``); the live evaluation merges as
    ``--config`` says. Where the two :class:`~zoomdet.zoom.merge.MergeConfig` differ and a variant carries no
    ``merge:{...}`` item of its own, ``apply`` adds one with the config's differing fields (``--merge-from-config``);
    otherwise a note says so. Returns (the variants' items, the notes)."""
    import yaml

    want, have = dataclasses.asdict(config_merge), dataclasses.asdict(cache_merge)
    diff = {k: v for k, v in want.items() if have[k] != v}
    if not diff:
        return specs, []
    item = "merge:" + yaml.safe_dump(diff, default_flow_style=True, sort_keys=False).strip()
    out, notes = {}, []
    for name, items in specs.items():
        if any(i.startswith("merge:") for i in items):
            out[name] = items
        elif apply:
            out[name] = items + [item]
        else:
            out[name] = items
            notes.append(f"variant {name} learns for the training cache's merge, and the config merges otherwise "
                         f"({', '.join(f'{k}: {have[k]} there, {v} here' for k, v in diff.items())}); "
                         f"--merge-from-config trains it for the config's merge")
    return out, notes


def main(argv=None) -> int:
    from zoomdet.eval.results import (add_agent_args, add_dataset_args, command_line, rows_from_report, run_zoomdet,
                                      train_agents, write_results)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    add_agent_args(ap)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME[=KEY:VALUE,...]",
                    help=f"agent variant (repeatable; default qnet-ap); named: {', '.join(VARIANTS)}")
    ap.add_argument("--ablations", action="store_true", help=f"also train {', '.join(ABLATIONS)}")
    ap.add_argument("--steps", type=int, default=30000, help="environment steps per agent (default 30000)")
    ap.add_argument("--eval-freq", type=int, default=None,
                    help="steps between evaluations on --eval-cache (default: a tenth of --steps, at least 500; "
                         "zoomdet quickstart's agent: 2500)")
    ap.add_argument("--save-freq", type=int, default=None, metavar="N",
                    help="keep a checkpoint of each agent every N steps in <out>/<variant>-s<seed>/checkpoints, to "
                         "play each later (benchmarks/cache_policies.py --agent); default: none")
    ap.add_argument("--budget-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="the per-episode budget range of every variant that draws one (default: the variant's, "
                         "[0.3, 0.7]; e.g. 0.08 0.3 for a coarse pass at 0.25)")
    ap.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="DQN overrides for every agent")
    ap.add_argument("--merge-from-config", action="store_true",
                    help="train every variant without a merge:{...} item of its own for --config's zoom.merge "
                         "(default: the training cache's, with a note where the two differ)")
    ap.add_argument("--budget", type=float, nargs="+", default=[0.35, 0.45, 0.6])
    ap.add_argument("--oracle", action="store_true", help="also run oracle-ap (the upper bound; look-ahead is slow)")
    ap.add_argument("--ensemble", action="store_true",
                    help="also evaluate, per variant, one policy on the mean Q-values of all its seeds (rows with "
                         "variant NAME-ensemble)")
    ap.add_argument("--ensemble-size", type=int, default=0, metavar="K",
                    help="with --ensemble: one policy per K consecutive --seeds of a variant instead of one of all "
                         "(the number of seeds must be a multiple of K; default 0, all seeds)")
    ap.add_argument("--model", choices=("best", "final"), default="best",
                    help="which checkpoint of each agent to evaluate: best (best_model.zip, the best on the "
                         "--eval-cache images; default) or final (the model at the last step, no selection)")
    ap.add_argument("--train-only", action="store_true",
                    help="train the agents and stop (run one process per seed in parallel, then once without)")
    ap.add_argument("--out", default="runs/bench/agents", help="work folder (agents, evaluation)")
    ap.add_argument("--results", default="agents", help="results file name under benchmarks/results (default agents)")
    args = ap.parse_args(argv)

    if args.eval_freq is not None and args.eval_freq < 1:
        ap.error(f"--eval-freq must be >= 1, got {args.eval_freq}")
    if args.save_freq is not None and args.save_freq < 1:
        ap.error(f"--save-freq must be >= 1, got {args.save_freq}")
    size = args.ensemble_size or len(args.seeds)
    if args.ensemble_size and not args.ensemble:
        ap.error("--ensemble-size needs --ensemble")
    if args.ensemble_size and (size < 2 or len(args.seeds) % size):
        ap.error(f"--ensemble-size {args.ensemble_size}: groups of at least 2 seeds that divide the "
                 f"{len(args.seeds)} --seeds")
    specs = dict(parse_variant(s) for s in (args.variant or ["qnet-ap"]))
    if args.ablations:
        specs.update(parse_variant(v) for v in ABLATIONS if v not in specs)
    if args.budget_range:
        lo, hi = args.budget_range
        specs = {n: kw + [f"budget_range:[{lo:g},{hi:g}]"] if any(k.startswith("budget_range:") for k in kw) else kw
                 for n, kw in specs.items()}
    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig

    from zoomdet.rnet.cache import RolloutCache

    config = load_config(EvalConfig, args.config)
    # the training cache's merge rule (a cache no longer there: the agents are trained, only evaluated)
    cache_merge = (RolloutCache(args.cache).zoom.merge if (Path(args.cache) / "manifest.json").is_file()
                   else config.zoom.merge)
    specs, merge_notes = merge_for_config(specs, config.zoom.merge, cache_merge, args.merge_from_config)
    for note in merge_notes + demonstrator_notes(specs, config.policies.greedy_stop):
        print(f"note: {note}", file=sys.stderr)
    out = Path(args.out)
    agents = train_agents(specs, args.seeds, args.cache, args.eval_cache, args.rnet, args.steps, out, args.hyperparams,
                          eval_freq=args.eval_freq, save_freq=args.save_freq)
    if args.train_only:
        return 0
    if args.model == "final":  # the last step's model, saved beside best_model.zip by `zoomdet train` as <env id>.zip
        from zoomdet.envs import ENV_ID

        agents = {m.with_name(f"{ENV_ID}.zip"): vs for m, vs in agents.items()}

    ev = out / f"eval-{args.dataset}"
    policies = ["coarse", "fine", *RULES] + (["oracle-ap"] if args.oracle else []) + [str(m) for m in agents]
    ensembles = {}  # policy name in the report -> (variant, group's place or None for all seeds, members)
    if args.ensemble:
        for variant in specs:
            models = [m for m, (v, _) in agents.items() if v == variant]
            if len(models) < 2:  # one seed: nothing to ensemble
                continue
            for g in range(0, len(models), size):
                group = models[g:g + size]
                policies.append("+".join(map(str, group)))
                ensembles["dqn-ensemble:" + "+".join(m.parent.name for m in group)] = (
                    f"{variant}-ensemble", g // size if args.ensemble_size else None, [agents[m][1] for m in group])
    run_zoomdet(["evaluate", "--config", args.config, "--data", args.data, "--rnet", args.rnet, "--out", str(ev),
                 "--images", str(args.images), "--budget", *map(str, args.budget), "--no-progress",
                 *[x for p in policies for x in ("--policy", p)]])
    report = json.loads((ev / "report.json").read_text())
    rows = rows_from_report(report, args.dataset, command=command_line())
    names = {f"dqn:{m.parent.name}/{m.stem}": vs for m, vs in agents.items()}
    names.update({name: (variant, place) for name, (variant, place, _) in ensembles.items()})
    for r in rows:
        variant, seed = names.get(r["policy"], (None, 0))
        r["variant"], r["seed"] = variant, seed
        if r["policy"] in ensembles:
            r["seeds"] = ensembles[r["policy"]][2]
        r["env_kwargs"] = specs.get(variant.removesuffix("-ensemble")) if variant else None
    from tables import agent_table  # benchmarks/tables.py: the README's table of these rows

    print(f"\n{args.dataset}, {report['images']} images, seeds {args.seeds}:")
    agent_table(rows)
    path = write_results(args.results, rows, replace={"dataset": args.dataset})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
