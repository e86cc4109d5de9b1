"""ZoomDet-v0 on hand-built caches: checkers, reward, termination, masking, and the Q-net agent."""

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import load_benchmark, write_fake_cache
from zoomdet.rnet.cache import CacheRecord, cached_windows
from zoomdet.types import Detections, Window
from zoomdet.zoom.engine import ZoomConfig
from zoomdet.zoom.windows import WindowConfig

import zoomdet.envs  # noqa: F401  (registers ZoomDet-v0)

W, H = 320, 240
ZOOM = ZoomConfig(windows=WindowConfig(refine_shift=0.1, refine_steps=1))


def D(boxes, scores, labels=None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(b, torch.tensor(scores, dtype=torch.float32), torch.ones(len(b), dtype=torch.long) if labels is None
                      else torch.tensor(labels))


def toy_record(image_id: int, cluster: int, rng: np.random.Generator) -> CacheRecord:
    """A 320x240 image: four 10-px objects inside small window ``cluster`` (4 + cluster) that the coarse pass
    finds with score 0.3 and the fine pass with 0.95, and a large object elsewhere both passes find at 0.9."""
    windows, reach = cached_windows(W, H, ZOOM)
    cw = windows[4 + cluster]
    cx, cy = (cw.x0 + cw.x1) / 2, (cw.y0 + cw.y1) / 2
    small = [[cx + dx - 5, cy + dy - 5, cx + dx + 5, cy + dy + 5] for dx, dy in ((-20, -15), (20, -15), (-20, 15), (20, 15))]
    big_x = 20.0 if cx > W / 2 else 250.0
    big = [[big_x, 150, big_x + 50, 200]]
    gt = torch.tensor(small + big)
    coarse = D(small + big, [0.3] * 4 + [0.9])

    def fine_in(w: Window) -> Detections:
        inside = [b for b in small + big if b[0] >= w.x0 and b[2] <= w.x1 and b[1] >= w.y0 and b[3] <= w.y1]
        return D(inside, [0.95 if b in small else 0.9 for b in inside]) if inside else Detections.empty()

    return CacheRecord(image_id, W, H, coarse, windows, reach, [fine_in(w) for w in windows], gt,
                       torch.ones(len(gt), dtype=torch.long), torch.zeros(len(gt), dtype=torch.bool))


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    recs = [toy_record(i + 1, i % 9, rng) for i in range(18)]
    return write_fake_cache(tmp_path_factory.mktemp("toy") / "cache", recs, zoom=ZOOM)


def missed_records() -> list[CacheRecord]:
    """The toy images, but the coarse pass misses two of the four small objects, which the fine pass finds."""
    recs = []
    for i in range(9):
        r = toy_record(i + 1, i, np.random.default_rng(i))
        recs.append(dataclasses.replace(r, coarse=D(r.coarse.boxes[2:].tolist(), r.coarse.scores[2:].tolist())))
    return recs


def make(toy_cache, **kw):
    kw = {"state": "oracle", "lam": 1.0, **kw}
    return gym.make("ZoomDet-v0", cache=str(toy_cache), **kw)


def test_env_passes_gymnasium_and_sb3_checkers(toy_cache):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(toy_cache)
    check_env(env.unwrapped, skip_render_check=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 notes the map is not a uint8 image: the Q-net is not a CnnPolicy
        sb3_check_env(env.unwrapped)


def test_reward_is_true_gain_minus_lambda_pixels_and_not_paid_twice(toy_cache):
    env = make(toy_cache, lam=2.0).unwrapped
    obs, info = env.reset(options={"index": 0})  # cluster in small window 0 (top-left)
    assert obs["map"].shape == (3, 12, 16) and obs["map"].dtype == np.float32
    win = env.candidates[4]
    _, r, term, trunc, info = env.step(4)
    # four pairs 0.3 -> 0.95 on true objects: 4 * (|1 - .3| - |1 - .95|) = 2.6; cost 2 * pixels share
    px = Window(*info["window"], 1.0).input_pixels / (W * H)
    assert info["true_gain"] == pytest.approx(2.6, abs=1e-4)
    assert r == pytest.approx(2.6 - 2.0 * px, abs=1e-4)
    assert info["pixels_ratio"] == pytest.approx(0.25 + px, abs=1e-6)
    assert tuple(info["proposed"]) == win.as_tuple()
    # large window 0 covers the same objects: nothing left to collect there, only the cost
    _, r2, *_ , info2 = env.step(0)
    assert info2["true_gain"] == pytest.approx(0.0, abs=1e-4) and r2 < 0


def test_ap_reward_sums_to_the_images_ap_change_minus_lambda_pixels(toy_cache):
    from zoomdet.eval.coco_eval import ImageAP

    env = make(toy_cache, lam=2.0, reward="ap").unwrapped
    env.reset(options={"index": 0})
    rec = env._img.record
    scorer = ImageAP(rec.gt_boxes, rec.gt_labels, rec.gt_crowd, rec.width, rec.height)
    start = scorer(rec.coarse)
    total, cost, gains = 0.0, 0.0, []
    for a in (4, 0):
        _, r, term, trunc, info = env.step(a)
        gains.append((info["true_gain"], info["ap_gain"]))
        px = Window(*info["window"], 1.0).input_pixels / (W * H)
        assert r == pytest.approx(info["ap_gain"] - 2.0 * px, abs=1e-6)
        total, cost = total + r, cost + 2.0 * px
        if term or trunc:
            break
    final = scorer(env.merged())
    assert total + cost == pytest.approx(100 * (final - start), abs=1e-6)  # rewards add up to the AP gained
    # the cluster in window 4 was found by the coarse pass at score 0.3, and ranked right: COCO AP is
    # already 1 there, so zooming adds no AP, where the paper's gain counts 2.6 for the higher scores
    assert start == final == pytest.approx(1.0)
    assert gains[0][0] == pytest.approx(2.6, abs=1e-4) and gains[0][1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="reward must be"):
        make(toy_cache, reward="score")


def test_dataset_ap_reward_is_the_change_of_the_caches_ap_times_its_images(tmp_path):
    from zoomdet.eval.coco_eval import coco_metrics, ground_truth_coco

    cache = write_fake_cache(tmp_path / "cache", missed_records(), zoom=ZOOM)
    env = make(cache, lam=0.0, reward="dataset-ap").unwrapped
    recs = env.records
    coco = ground_truth_coco(r.coco_image for r in recs)
    ids = [r.image_id for r in recs]

    def dataset_ap(k, detections) -> float:  # image k swapped in, every other image at its coarse pass
        others = [d for j, r in enumerate(recs) if j != k for d in r.coarse.to_coco(r.image_id)]
        return coco_metrics(coco, others + detections.to_coco(recs[k].image_id), ids)["ap"]

    for k in (1, 4):
        env.reset(options={"index": k})
        start, total = dataset_ap(k, recs[k].coarse), 0.0
        for a in (4, 0):
            _, r, term, trunc, info = env.step(a)
            assert r == pytest.approx(info["ap_gain"], abs=1e-9)
            total += r
            if term or trunc:
                break
        assert total == pytest.approx(100 * len(recs) * (dataset_ap(k, env.merged()) - start), abs=1e-6)
        assert total > 0  # the coarse pass missed what the fine pass finds


def test_stop_and_step_cap_and_budget(toy_cache):
    env = make(toy_cache).unwrapped
    env.reset(options={"index": 3})
    _, r, term, trunc, info = env.step(env.stop_action)
    assert term and not trunc and r == 0.0 and "detections" in info
    env = make(toy_cache, max_steps=2, state="entropy").unwrapped
    env.reset(options={"index": 3})
    env.step(5)
    _, _, term, trunc, _ = env.step(6)
    assert trunc and not term
    # budget 0.45: the coarse pass (0.25) plus one small window (0.16) fits, a second one does not
    env = make(toy_cache, max_pixels_ratio=0.45, state="entropy").unwrapped
    env.reset(options={"index": 3})
    m = env.action_masks()
    assert not m[:4].any() and m[4:].all()  # large windows never fit
    _, _, term, trunc, _ = env.step(5)
    assert trunc and not term and env.action_masks().tolist() == [False] * 13 + [True]
    # exhausted: terminate: the same budget-ending zoom is the MDP's end (nothing but a 0-reward stop is left)
    env = make(toy_cache, max_pixels_ratio=0.45, state="entropy", exhausted="terminate").unwrapped
    env.reset(options={"index": 3})
    _, _, term, trunc, _ = env.step(5)
    assert term and not trunc
    env = make(toy_cache, max_steps=2, state="entropy", exhausted="terminate").unwrapped
    env.reset(options={"index": 3})
    env.step(5)
    _, _, term, trunc, _ = env.step(6)
    assert trunc and not term  # the step cap stays a truncation
    with pytest.raises(ValueError, match="exhausted must be"):
        make(toy_cache, exhausted="stop")


def test_oracle_state_terminates_when_the_gain_is_collected(toy_cache):
    env = make(toy_cache).unwrapped
    env.reset(options={"index": 4})  # cluster in small window 4 (centre)
    _, _, term, trunc, info = env.step(8)
    assert term and not trunc
    assert env.gain.positive_total() < env.config.stop_gain
    # merged detections replace the coarse 0.3 boxes with the fine 0.95 ones
    assert sorted(d["score"] for d in info["detections"]) == pytest.approx([0.9] + [0.95] * 4)
    assert all(d["image_id"] == 5 for d in info["detections"])


def test_masks_taken_covered_and_invalid_actions_are_no_ops(toy_cache):
    env = make(toy_cache, state="entropy").unwrapped
    obs, _ = env.reset(options={"index": 1})
    assert obs["mask"].tolist() == [1] * 14
    env.step(0)  # large top-left window covers small window 0 (index 4) entirely
    m = env.action_masks()
    assert not m[0] and not m[4] and m[5] and m[13]
    spent = env.pixels_ratio
    _, r, term, trunc, info = env.step(0)
    assert info.get("invalid_action") and r == 0.0 and env.pixels_ratio == spent and not term
    with pytest.raises(ValueError, match="action must be"):
        env.step(99)


def test_bad_options_are_refused(toy_cache, tmp_path):
    with pytest.raises(ValueError, match="needs an R-net"):
        gym.make("ZoomDet-v0", cache=str(toy_cache))
    with pytest.raises(TypeError, match="unknown ZoomEnv option"):
        make(toy_cache, lamda=1.0)
    with pytest.raises(ValueError, match="state must be"):
        make(toy_cache, state="magic")
    with pytest.raises(FileNotFoundError, match="no rollout cache"):
        gym.make("ZoomDet-v0", cache=str(tmp_path / "nothing"), state="oracle")


def _mean_return(env, act, episodes=18):
    total = 0.0
    for k in range(episodes):
        obs, _ = env.reset(options={"index": k})
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            total += r
            done = term or trunc
    return total / episodes


def test_dqn_qnet_learns_better_than_random_and_resumes(toy_cache, tmp_path):
    from zoomdet.agents.policy import algorithm_class
    from zoomdet.agents.qnet import random_masked_actions
    from zoomdet.agents.train import TrainArgs, train_agent

    hp = {"learning_starts": 200, "exploration_fraction": 0.5, "target_update_interval": 100, "learning_rate": 2e-3,
          "buffer_size": 5000}
    env_kwargs = {"state": "entropy", "lam": 1.0}
    args = TrainArgs(cache=str(toy_cache), eval_cache=str(toy_cache), n_timesteps=2500, eval_freq=1000, hyperparams=hp,
                     env_kwargs=env_kwargs, log_folder=str(tmp_path / "logs"), save_freq=1000, progress=False,
                     conf_file="configs/agents/dqn.yml")
    run = train_agent(args)
    assert run == tmp_path / "logs" / "dqn" / "ZoomDet-v0_1"
    for f in ("ZoomDet-v0.zip", "best_model.zip", "config.yml", "args.yml", "zoomdet.json", "evaluations.npz",
              "checkpoints/rl_model_1000_steps.zip", "checkpoints/rl_model_replay_buffer_1000_steps.pkl"):
        assert (run / f).is_file(), f
    model = algorithm_class("dqn").load(str(run / "ZoomDet-v0.zip"))
    env = make(toy_cache, **env_kwargs).unwrapped
    rng = np.random.default_rng(0)
    learned = _mean_return(env, lambda o: int(model.predict(o, deterministic=True)[0]))
    random = _mean_return(env, lambda o: int(random_masked_actions(o, rng)))
    assert learned > random + 0.5, (learned, random)

    # resume from the first checkpoint: trains up to n_timesteps in total, into a new run folder
    args.trained_agent = str(run / "checkpoints" / "rl_model_1000_steps.zip")
    args.n_timesteps, args.eval_freq, args.save_freq = 1200, -1, -1
    run2 = train_agent(args)
    resumed = algorithm_class("dqn").load(str(run2 / "ZoomDet-v0.zip"))
    assert run2.name == "ZoomDet-v0_2" and resumed.num_timesteps == 1200


def test_maskable_ppo_trains_and_runs_live_through_the_engine(toy_cache, tmp_path):
    from tests.conftest import StubDetector
    from zoomdet.agents import AgentPolicy
    from zoomdet.agents.train import TrainArgs, train_agent
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import make_policy

    args = TrainArgs(algo="ppo_mask", cache=str(toy_cache), n_timesteps=256, eval_freq=-1, progress=False,
                     hyperparams={"n_steps": 128, "batch_size": 32, "n_epochs": 2},
                     env_kwargs={"state": "entropy", "lam": 1.0}, log_folder=str(tmp_path / "logs"),
                     conf_file="configs/agents/ppo_mask.yml")
    run = train_agent(args)
    model_path = run / "ZoomDet-v0.zip"
    assert model_path.is_file() and (run / "zoomdet.json").is_file()
    # the cache was built by detector "fake": a policy for another detector is refused
    with pytest.raises(ValueError, match="trained on a cache of detector fake"):
        make_policy(str(model_path), detector_id="stub")
    assert AgentPolicy.from_path(model_path, detector_id="fake").name.startswith("ppo_mask:")
    import zipfile  # beside the run's zoomdet.json, files that are no model: text, a zip without SB3's data
    (run / "text.zip").write_text("not a model")
    with zipfile.ZipFile(run / "other.zip", "w") as z:
        z.writestr("x.txt", "hi")
    for bad in ("text.zip", "other.zip"):
        with pytest.raises(ValueError, match=f"agent .*{bad} is not a ppo_mask model that loads"):
            AgentPolicy.from_path(run / bad)
    with pytest.raises(ValueError, match="only dqn models can be joined"):  # no Q-values to average
        AgentPolicy.from_paths([model_path, model_path])
    # an agent from before detector ids (the weights' digest only) is refused by every live detector
    info = json.loads((run / "zoomdet.json").read_text())
    info["detector_checkpoint_id"] = info.pop("detector_id")
    (run / "zoomdet.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="train it on a cache of this detector"):
        AgentPolicy.from_path(model_path, detector_id="fake")
    policy = AgentPolicy.from_path(model_path)
    boxes = torch.tensor([[40.0, 40, 48, 48], [200, 150, 260, 200]])
    engine = ZoomEngine(StubDetector(boxes, torch.tensor([1, 1]), min_px=6), ZOOM)
    res = engine.run(torch.rand(3, H, W), policy, max_pixels_ratio=0.6)
    assert res.cost.pixels_ratio <= 0.6 + 1e-9
    assert all(r.candidate >= 0 for r in res.regions)
    # stateless per call: the same image gives the same episode
    again = engine.run(torch.rand(3, H, W), policy, max_pixels_ratio=0.6)
    assert [r.window for r in again.regions] == [r.window for r in res.regions]


def test_train_cli_refuses_bad_input(toy_cache, tmp_path, capsys):
    from zoomdet.cli import main

    base = ["train", "--cache", str(toy_cache), "-f", str(tmp_path), "--no-progress", "-n", "10"]
    assert main(base + ["--env-kwargs", "lamda:1"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert main(base + ["--env-kwargs", "state:entropy", "budget_range:[0.5,0.2]"]) == 2
    assert "budget_range must be" in capsys.readouterr().err
    assert main(base + ["--env-kwargs", "state:entropy", "extra_channels:[colour]"]) == 2
    assert "extra_channels must be" in capsys.readouterr().err
    assert main(base + ["--hyperparams", "learning_rate"]) == 2
    assert "expected key:value" in capsys.readouterr().err
    # values of the wrong type are named by their field (they used to fail mid-training, or not at all)
    for item, said in [("lam:abc", "lam must be a number"), ("info_detections:maybe", "info_detections must be true"),
                       ("classes:abc", "classes must be a list"), ("obs_scale:-1", "obs_scale must be > 0"),
                       ("merge:{methd: fuse}", "unknown option(s) merge.methd"), ("merge:fuse", "merge must be a mapping")]:
        assert main(base + ["--env-kwargs", "state:entropy", item]) == 2
        assert said in capsys.readouterr().err
    # values SB3 itself refuses (with an assert) are reported, and no run folder is left behind
    assert main(base + ["--env-kwargs", "state:entropy", "--hyperparams", "learning_rate:abc"]) == 2
    assert "dqn refused its options" in capsys.readouterr().err and not (tmp_path / "dqn").exists()
    for n in ("0", "-5"):
        assert main(base[:-1] + [n, "--env-kwargs", "state:entropy"]) == 2
        assert "--n-timesteps must be >= 1" in capsys.readouterr().err
    assert main(base + ["--trained-agent", str(tmp_path / "none.zip"), "--env-kwargs", "state:entropy"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--cache", str(tmp_path / "nocache"), "-f", str(tmp_path), "--env-kwargs", "state:entropy"]) == 2
    assert "no rollout cache" in capsys.readouterr().err


def test_random_budgets_are_drawn_per_episode_and_respected(toy_cache):
    env = make(toy_cache, budget_range=[0.35, 0.7], extra_channels=["budget"]).unwrapped
    env.reset(seed=3)
    budgets, spent = [], []
    for k in range(30):
        obs, info = env.reset(options={"index": k % 18})
        b = info["max_pixels_ratio"]
        budgets.append(b)
        # the budget plane: what is left, as a fraction of the image (the coarse pass at 0.5 spent 0.25)
        assert obs["map"].shape == (4, 12, 16)
        np.testing.assert_allclose(obs["map"][3], b - 0.25, atol=1e-6)
        done = False
        while not done:
            allowed = np.flatnonzero(env.action_masks()[:-1])
            a = int(allowed[0]) if len(allowed) else env.stop_action
            obs, _, term, trunc, info = env.step(a)
            done = term or trunc
        spent.append(info["pixels_ratio"])
        assert info["pixels_ratio"] <= b + 1e-9
    assert min(budgets) >= 0.35 and max(budgets) <= 0.7 and len(set(budgets)) == 30
    assert max(spent) > min(spent)  # larger budgets let more windows in
    # seeded: the same draws again
    env2 = make(toy_cache, budget_range=[0.35, 0.7], extra_channels=["budget"]).unwrapped
    env2.reset(seed=3)
    assert [env2.reset(options={"index": k % 18})[1]["max_pixels_ratio"] for k in range(30)] == budgets
    # sequential (evaluation) order: each image keeps its draw on every pass, so checkpoints meet the same budgets
    ev = make(toy_cache, budget_range=[0.35, 0.7], order="sequential").unwrapped
    ev.reset(seed=5)
    passes = [[ev.reset()[1]["max_pixels_ratio"] for _ in range(18)] for _ in range(2)]
    assert passes[0] == passes[1] and len(set(passes[0])) == 18


def test_context_planes_come_from_coarse_detections(toy_cache):
    from zoomdet.envs.zoom_env import context_planes

    env = make(toy_cache, extra_channels=["entropy", "scores", "small"]).unwrapped
    obs, _ = env.reset(options={"index": 0})
    assert obs["map"].shape == (6, 12, 16)
    rec = env.records[0]
    planes = context_planes(rec.coarse, rec.width, rec.height, env.config)
    np.testing.assert_allclose(obs["map"][3:], planes)
    # scores: 4 x 0.3 + 0.9 in all; small: the four 10-px boxes; entropy of 0.3 and 0.9 in bits
    assert planes[1].sum() == pytest.approx(4 * 0.3 + 0.9, rel=1e-4)
    assert planes[2].sum() == pytest.approx(4.0, rel=1e-4)
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    assert planes[0].sum() == pytest.approx(4 * h(0.3) + h(0.9), rel=1e-4)
    # the planes stay with the image while the agent zooms; the gain channel is zeroed where it zoomed
    obs2, *_ = env.step(4)
    np.testing.assert_allclose(obs2["map"][3:], planes)
    # an image with no detections has empty planes
    empty = context_planes(Detections.empty(), W, H, env.config)
    assert empty.shape == (3, 12, 16) and not empty.any()


def test_new_options_refuse_bad_values(toy_cache):
    with pytest.raises(ValueError, match="extra_channels"):
        make(toy_cache, extra_channels=["colour"])
    with pytest.raises(ValueError, match="extra_channels"):
        make(toy_cache, extra_channels=["scores", "scores"])
    with pytest.raises(ValueError, match="budget_range"):
        make(toy_cache, budget_range=[0.6, 0.4])
    with pytest.raises(ValueError, match="budget_range"):
        make(toy_cache, budget_range=[0.0, 0.4])


def test_live_agent_with_context_planes_builds_the_envs_observation(toy_cache, tmp_path):
    """The live policy's observation equals the environment's on the same coarse detections and budget."""
    from zoomdet.agents import AgentPolicy
    from zoomdet.agents.train import TrainArgs, train_agent
    from zoomdet.zoom.engine import EpisodeState
    from zoomdet.zoom.windows import GainMap

    kw = {"state": "entropy", "lam": 1.0, "extra_channels": ["entropy", "scores", "small", "budget"],
          "budget_range": [0.4, 0.8]}
    run = train_agent(TrainArgs(cache=str(toy_cache), n_timesteps=300, eval_freq=-1, progress=False, env_kwargs=kw,
                                hyperparams={"learning_starts": 100, "buffer_size": 1000},
                                log_folder=str(tmp_path / "logs"), conf_file="configs/agents/dqn.yml"))
    policy = AgentPolicy.from_path(run / "ZoomDet-v0.zip")
    assert policy.config.extra_channels == tuple(kw["extra_channels"])
    seen = {}
    orig = policy.model.predict
    policy.model.predict = lambda obs, **k: (seen.setdefault("obs", obs), orig(obs, **k))[1]
    env = make(toy_cache, **{**kw, "budget_range": None, "max_pixels_ratio": 0.6}).unwrapped
    env_obs, _ = env.reset(options={"index": 0})
    rec = env.records[0]
    state = EpisodeState(rec.width, rec.height, rec.coarse, env.candidates, [], 0.25, GainMap(rec.width, rec.height, rec.coarse.boxes, policy.gain_model.predict(rec.coarse)),
                         env.action_masks()[:-1], np.random.default_rng(0), max_pixels_ratio=0.6)
    policy.select(state)
    np.testing.assert_allclose(seen["obs"]["map"], env_obs["map"], atol=1e-6)


def test_agents_benchmark_parses_variants_and_refuses_unknown_ones():
    mod = load_benchmark("agents")
    name, kw = mod.parse_variant("mine=reward:ap,budget_range:[0.2,0.5],extra_channels:[entropy,budget]")
    assert name == "mine" and kw == ["reward:ap", "budget_range:[0.2,0.5]", "extra_channels:[entropy,budget]"]
    name, kw = mod.parse_variant("mine=reward:ap,merge:{method: fuse, fuse_score: mean},lam:0")  # {...} kept whole
    assert kw == ["reward:ap", "merge:{method: fuse, fuse_score: mean}", "lam:0"]
    name, kw = mod.parse_variant("qnet-ap")
    assert "reward:ap" in kw and any(k.startswith("budget_range:") for k in kw)
    # every named variant is a valid environment configuration
    from zoomdet.agents.train import parse_key_values
    from zoomdet.envs import ZoomEnvConfig

    from zoomdet.agents.demos import DemoConfig
    from zoomdet.eval.results import split_variant

    for v in mod.VARIANTS:
        env_items, hp_items = split_variant(mod.parse_variant(v)[1])
        ZoomEnvConfig.from_options(**{"rnet": "x.pt", **parse_key_values(env_items)})
        DemoConfig.pop_from(parse_key_values(hp_items))  # the demonstration options are valid too
    assert split_variant(mod.parse_variant("qnet-dqfd")[1])[1] == ["demo_rule:greedy-entropy"]
    with pytest.raises(SystemExit, match="unknown variant"):
        mod.parse_variant("qnet-magic")
    # a demonstrator that stops otherwise than the config's live rule is pointed out, one that matches is not
    specs = dict(mod.parse_variant(v) for v in ("qnet-dqfd", "qnet-win", "mine=reward:ap,dqn.demo_rule:greedy,"
                                                 "dqn.demo_stop_gain:0"))
    at_hituav, at_airbus = mod.demonstrator_notes(specs, 0.1), mod.demonstrator_notes(specs, 0.0)
    assert len(at_hituav) == 1 and at_hituav[0].startswith("variant mine:") and "demo_stop_gain:0.1 " in at_hituav[0]
    assert len(at_airbus) == 1 and at_airbus[0].startswith("variant qnet-dqfd:") and "demo_stop_gain:0 " in at_airbus[0]
    # a variant learns for the config's merge where asked (--merge-from-config), and is pointed out where not
    from zoomdet.zoom.merge import MergeConfig

    fuse = MergeConfig(method="fuse", fuse_score="mean")
    specs = dict(mod.parse_variant(v) for v in ("qnet-dqfd-term", "qnet-dqfd-term-fuse"))
    assert mod.merge_for_config(specs, MergeConfig(), MergeConfig(), True) == (specs, [])
    kept, notes = mod.merge_for_config(specs, fuse, MergeConfig(), False)
    assert kept == specs and len(notes) == 1 and notes[0].startswith("variant qnet-dqfd-term learns")
    assert "method: replace there, fuse here" in notes[0] and "fuse_score: max there, mean here" in notes[0]
    applied, notes = mod.merge_for_config(specs, fuse, MergeConfig(), True)
    assert notes == [] and applied["qnet-dqfd-term-fuse"] == specs["qnet-dqfd-term-fuse"]  # its own merge kept
    assert applied["qnet-dqfd-term"] == specs["qnet-dqfd-term"] + ["merge:{method: fuse, fuse_score: mean}"]
    env_items = parse_key_values(split_variant(applied["qnet-dqfd-term"])[0])
    assert ZoomEnvConfig.from_options(rnet="x.pt", **env_items).merge == {"method": "fuse", "fuse_score": "mean"}


def test_agents_benchmark_evaluates_the_final_models_when_asked(monkeypatch, tmp_path, capsys):
    """``--model final`` evaluates each agent's last-step model (``ZoomDet-v0.zip``) instead of ``best_model.zip``,
    and its rows still carry their variant and seed."""
    from pathlib import Path

    from zoomdet.eval import results

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    mod = load_benchmark("agents")
    evaluated = []

    def fake_zoomdet(argv):  # `zoomdet train` leaves both models; `zoomdet evaluate` a report of what it was given
        if argv[0] == "train":
            run = Path(argv[argv.index("-f") + 1]) / "dqn" / "ZoomDet-v0_1"
            run.mkdir(parents=True)
            for name in ("best_model.zip", "ZoomDet-v0.zip"):
                (run / name).write_text("model")
            return
        given = [argv[i + 1] for i, a in enumerate(argv) if a == "--policy"]
        evaluated.extend(given)
        name = lambda p: (f"dqn:{Path(p).parent.name}/{Path(p).stem}" if "+" not in p  # noqa: E731
                          else "dqn-ensemble:" + "+".join(Path(q).parent.name for q in p.split("+")))
        row = {k: 0.5 for k in ("ap", "ap50", "ap_small", "ap_medium", "ap_large", "pixels_ratio", "rel_ap",
                                "rel_pixels", "rel_time", "detector_calls_per_image", "time_per_image_s")}
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps({"images": 3, "policies": [
            {"name": name(p), "budget": 0.45, **row} for p in given]}))

    monkeypatch.setattr(results, "run_zoomdet", fake_zoomdet)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    common = ["--config", str(bench.parent / "configs" / "eval" / "hituav_gpu_agent.yaml"), "--data", "d.json", "--dataset", "toy", "--cache", "c", "--eval-cache", "e", "--rnet", "r.pt",
              "--variant", "qnet-win", "--seeds", "0", "1", "--budget", "0.45", "--out", str(tmp_path / "out")]
    assert mod.main([*common, "--model", "final", "--ensemble"]) == 0
    agents = [p for p in evaluated if p.endswith(".zip")]
    assert len(agents) == 3 and all(p.endswith("ZoomDet-v0.zip") for p in "+".join(agents).split("+"))
    rows = {r["policy"]: r for r in json.loads((tmp_path / "results" / "agents.json").read_text())}
    assert (rows["dqn:qnet-win-s1/ZoomDet-v0"]["variant"], rows["dqn:qnet-win-s1/ZoomDet-v0"]["seed"]) == ("qnet-win", 1)
    assert rows["dqn-ensemble:qnet-win-s0+qnet-win-s1"]["variant"] == "qnet-win-ensemble"
    with pytest.raises(SystemExit):
        mod.main([*common, "--model", "last"])
    assert "invalid choice" in capsys.readouterr().err

    # --ensemble-size K: one ensemble per K consecutive seeds, each a seed of the ensemble variant
    evaluated.clear()
    four = [*common[:common.index("--seeds") + 1], "0", "1", "2", "3", "--budget", "0.45", "--out", str(tmp_path / "out4")]
    assert mod.main([*four, "--ensemble", "--ensemble-size", "2"]) == 0
    assert [p.count("+") for p in evaluated if "+" in p] == [1, 1]
    rows = {r["policy"]: r for r in json.loads((tmp_path / "results" / "agents.json").read_text())}
    first, second = rows["dqn-ensemble:qnet-win-s0+qnet-win-s1"], rows["dqn-ensemble:qnet-win-s2+qnet-win-s3"]
    assert (first["variant"], first["seed"], first["seeds"]) == ("qnet-win-ensemble", 0, [0, 1])
    assert (second["variant"], second["seed"], second["seeds"]) == ("qnet-win-ensemble", 1, [2, 3])
    assert "| qnet-win-ensemble | 0.45 | 2 |" in capsys.readouterr().out  # two ensembles, one mean
    for bad, message in ((["--ensemble", "--ensemble-size", "3"], "divide the 4 --seeds"),
                         (["--ensemble", "--ensemble-size", "1"], "at least 2 seeds"),
                         (["--ensemble-size", "2"], "needs --ensemble"),
                         (["--save-freq", "0"], "--save-freq must be >= 1")):
        with pytest.raises(SystemExit):
            mod.main([*four, *bad])
        assert message in capsys.readouterr().err


def test_train_agents_passes_a_variants_dqn_items_as_hyperparameters(monkeypatch, tmp_path):
    from pathlib import Path

    from zoomdet.eval import results

    calls = []

    def fake_zoomdet(argv):  # stands in for `zoomdet train`: records the command, leaves a finished run behind
        calls.append(argv)
        run = Path(argv[argv.index("-f") + 1]) / "dqn" / "ZoomDet-v0_1"
        run.mkdir(parents=True)
        (run / "best_model.zip").write_text("model")

    monkeypatch.setattr(results, "run_zoomdet", fake_zoomdet)
    agents = results.train_agents({"v": ["reward:ap", "dqn.demo_rule:greedy-entropy"], "w": ["reward:gain"]}, [0], "c",
                                  "e", "r.pt", 100, tmp_path / "out", hyperparams=["gamma:0.5"])
    assert len(calls) == 2 and len(agents) == 2
    v, w = calls
    assert "--save-freq" not in v
    results.train_agents({"x": ["reward:ap"]}, [0], "c", "e", "r.pt", 100, tmp_path / "out", save_freq=25)
    x = calls[-1]
    assert x[x.index("--save-freq") + 1] == "25"
    assert v[v.index("--env-kwargs") + 1:v.index("--eval-freq")] == ["rnet:r.pt", "reward:ap"]
    assert v[v.index("--hyperparams") + 1:] == ["gamma:0.5", "demo_rule:greedy-entropy"]
    assert w[w.index("--hyperparams") + 1:] == ["gamma:0.5"]


def test_window_signal_benchmark_scores_states_against_the_oracles_first_pick(monkeypatch, tmp_path, capsys):
    import dataclasses
    import json

    import zoomdet.eval.results as results

    recs = missed_records()
    toy_cache = write_fake_cache(tmp_path / "cache", recs, zoom=ZOOM)

    mod = load_benchmark("window_signal")
    # greedy's first pick: best score per pixel among positive scores; none positive -> stop (0 AP points)
    assert mod.first_pick(np.array([1.0, 3.0, 2.0]), np.array([1.0, 4.0, 1.0]), np.array([5.0, 6.0, 7.0])) == 7.0
    assert mod.first_pick(np.array([0.0, -1.0]), np.array([1.0, 1.0]), np.array([5.0, 6.0])) == 0.0

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert mod.main(["--cache", str(toy_cache), "--dataset", "toy"]) == 0
    rows = {r["state"]: r for r in json.loads((tmp_path / "window_signal.json").read_text())}
    assert set(rows) == {"entropy", "fine-objects"}
    for r in rows.values():
        assert r["dataset"] == "toy" and r["images"] == 9 and r["windows_per_image"] == 13
        assert r["random_pick"] < r["first_pick"] <= r["oracle_pick"] + 1e-9
    # the toy's small objects are what the fine pass finds better: the object map takes the oracle's first pick
    assert rows["fine-objects"]["share"] == pytest.approx(1.0)
    assert "fine-objects" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(toy_cache)])  # --dataset is required
    capsys.readouterr()
    empty = [dataclasses.replace(r, gt_boxes=torch.zeros(0, 4), gt_labels=torch.zeros(0, dtype=torch.long),
                                 gt_crowd=torch.zeros(0, dtype=torch.bool)) for r in recs[:2]]
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(write_fake_cache(tmp_path / "empty", empty, zoom=ZOOM)), "--dataset", "toy"])
    assert "no image with objects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(tmp_path / "none"), "--dataset", "toy"])
    assert "no rollout cache" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(toy_cache), "--rnet", str(tmp_path / "none.pt"), "--dataset", "toy"])
    assert "R-net checkpoint not found" in capsys.readouterr().err


def test_window_signal_ridge_chooses_its_penalty_on_held_out_images():
    mod = load_benchmark("window_signal")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(6, 3)) for _ in range(20)]
    ys = [x @ np.array([2.0, -1.0, 0.0]) for x in xs]  # the label is a linear function of the features
    pixels = [np.ones(6) for _ in xs]
    predict, alpha = mod.fit_ridge(xs, ys, pixels)
    assert alpha == 1.0  # the least penalty wins where the relation is exact
    x = rng.normal(size=(6, 3))
    assert np.corrcoef(predict(x), x @ np.array([2.0, -1.0, 0.0]))[0, 1] > 0.99
    noise = [rng.normal(size=6) for _ in xs]  # labels unrelated to the features: the penalty goes up
    assert mod.fit_ridge(xs, noise, pixels, alphas=(1e-3, 1e6))[1] == 1e6
    with pytest.raises(ValueError, match="need at least 5"):
        mod.fit_ridge(xs[:3], ys[:3], pixels[:3])


def test_window_signal_fits_window_scorers_on_a_training_cache(synth_small, tiny_checkpoint, monkeypatch, tmp_path,
                                                               capsys):
    """fit:summaries and fit:dense (the coarse pass's FPN features pooled over each window) on a real cache."""
    import zoomdet.eval.results as results
    from zoomdet.detector.detector import Detector
    from zoomdet.rnet.cache import RolloutCache, build_cache

    mod = load_benchmark("window_signal")
    cache = build_cache(str(synth_small), tmp_path / "c", str(tiny_checkpoint), ZOOM, shard_size=2, workers=0,
                        progress=False)
    det = Detector.from_checkpoint(tiny_checkpoint)
    rec = next(iter(RolloutCache(cache.root)))
    images = mod.CacheImages(RolloutCache(cache.root))
    f = mod.dense_window_features(det, images(rec.image_id), rec.windows[:rec.num_candidates], 0.5)
    assert f.shape == (13, 2 * 4 * det.config.fpn_channels) and np.isfinite(f).all()
    # mean and max of each level: the max is never below the mean
    c = det.config.fpn_channels
    assert all((f[:, (2 * lv + 1) * c:(2 * lv + 2) * c] >= f[:, 2 * lv * c:(2 * lv + 1) * c] - 1e-6).all()
               for lv in range(4))

    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    folds = []
    real_fit = mod.fit_ridge
    monkeypatch.setattr(mod, "fit_ridge", lambda xs, ys, px: folds.append(len(xs)) or real_fit(xs, ys, px, folds=2))
    assert mod.main(["--cache", str(cache.root), "--fit-cache", str(cache.root), "--dense", "--dataset", "tiny"]) == 0
    rows = {r["state"]: r for r in json.loads((tmp_path / "window_signal.json").read_text())}
    n = rows["entropy"]["images"]  # the synthetic images with objects, fitted on and scored
    assert set(rows) == {"entropy", "fit:summaries", "fit:dense", "fine-objects"} and folds == [n, n] and n >= 2
    for s in ("fit:summaries", "fit:dense"):
        assert rows[s]["fit_cache"] == str(cache.root) and rows[s]["ridge_alpha"] > 0 and rows[s]["images"] == n
    out = capsys.readouterr().out  # the window's area, entropy and count, then 2 x 4 levels x 16 channels
    assert f"fit:summaries: 3 features, {n} images" in out and f"fit:dense: 131 features, {n} images" in out

    with pytest.raises(SystemExit):
        mod.main(["--cache", str(cache.root), "--dense", "--dataset", "tiny"])
    assert "--dense needs --fit-cache" in capsys.readouterr().err
    other = write_fake_cache(tmp_path / "other", [toy_record(1, 0, np.random.default_rng(0))], zoom=ZOOM)
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(cache.root), "--fit-cache", str(other), "--dataset", "tiny"])
    assert "another detector or zoom settings" in capsys.readouterr().err
    manifest = json.loads((cache.root / "manifest.json").read_text())
    __import__("shutil").copytree(cache.root, tmp_path / "aug")
    (tmp_path / "aug" / "manifest.json").write_text(json.dumps({**manifest, "augment": ["identity", "hflip"]}))
    with pytest.raises(ValueError, match="augmented views"):
        mod.CacheImages(RolloutCache(tmp_path / "aug"))


def test_miss_map_learns_where_the_coarse_pass_missed_and_scores_windows(synth_small, tiny_checkpoint, monkeypatch,
                                                                         tmp_path, capsys):
    """benchmarks/miss_map.py: its labels, its head learning a map that is in the features, and window_signal's
    ``--miss`` states on a real cache of the tiny detector."""
    import zoomdet.eval.results as results
    from zoomdet.rnet.cache import build_cache

    mm = load_benchmark("miss_map")
    # labels: found = a coarse box of the same class, IoU >= 0.5, score >= 0.5; crowd objects are never missed
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], dtype=torch.float32)
    coarse = D([[0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.3, 0.9], [1, 1, 2])
    missed = mm.missed_objects(gt, torch.tensor([1, 1, 1, 1]), torch.tensor([False, False, False, True]), coarse)
    assert missed.tolist() == [False, True, True, False]
    assert mm.missed_objects(gt, torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool), coarse,
                             score=0.2).tolist() == [False, False, True, True]
    # cells (8 px) whose centre is in a box, and the centre cell of a box smaller than a cell
    t = mm.cell_target(torch.tensor([[0.0, 0.0, 16.0, 8.0], [33.0, 17.0, 35.0, 19.0]]), (4, 6), (8.0, 8.0))
    assert t.shape == (4, 6) and t[0, :2].tolist() == [1.0, 1.0] and t[2, 4] == 1.0 and t.sum() == 3
    assert mm.average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert mm.average_precision(np.array([0.1, 0.8, 0.9]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    # the head learns a map that one feature channel carries under noise, and a head left untrained does not
    g = torch.Generator().manual_seed(0)
    targets = [(torch.rand(12, 16, generator=g) < 0.05).float() for _ in range(24)]
    feats = [torch.cat([y[None] + 0.2 * torch.randn(1, 12, 16, generator=g), torch.randn(3, 12, 16, generator=g)])
             for y in targets]
    head = mm.train_head(feats[:16], targets[:16], epochs=40, lr=1e-2, progress=False)
    untrained = mm.MissHead(4)
    with torch.inference_mode():
        ap = [mm.average_precision(torch.cat([h(f[None]).flatten() for f in feats[16:]]).numpy(),
                                   torch.cat([y.flatten() for y in targets[16:]]).numpy()) for h in (head, untrained)]
    assert ap[0] > 0.8 > ap[1] + 0.3
    with pytest.raises(ValueError, match="no image"):
        mm.train_head([], [])

    # the script on the tiny detector, then window_signal --miss on a cache of the same detector
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"checkpoint: {tiny_checkpoint}\nzoom:\n  coarse_scale: 0.5\n")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    head_path = tmp_path / "miss.pt"
    assert mm.main(["--config", str(cfg), "--data", str(synth_small), "--val-data", str(synth_small), "--epochs", "2",
                    "--dataset", "tiny", "--out", str(head_path)]) == 0
    out = capsys.readouterr().out
    assert "4 training images" in out and "cell-level AP of the miss map" in out
    row, = json.loads((tmp_path / "miss_map.json").read_text())
    assert row["dataset"] == "tiny" and row["val_images"] == 4 and 0 <= row["val_positive_rate"] <= 1
    saved = torch.load(head_path, weights_only=False)
    assert saved["kind"] == "zoomdet-miss-map" and saved["train_images"] == 4 and saved["val"]["images"] == 4
    cache = build_cache(str(synth_small), tmp_path / "c", str(tiny_checkpoint), ZOOM, shard_size=2, workers=0,
                        progress=False)
    ws = load_benchmark("window_signal")
    assert ws.main(["--cache", str(cache.root), "--miss", str(head_path), "--miss-beta", "0.5", "--dataset",
                    "tiny"]) == 0
    rows = {r["state"]: r for r in json.loads((tmp_path / "window_signal.json").read_text())}
    assert set(rows) == {"entropy", "miss", "entropy+miss@0.5", "fine-objects"}
    assert rows["miss"]["miss_map"]["train_images"] == 4
    for r in rows.values():
        assert r["random_pick"] - 1e-9 <= r["oracle_pick"] and r["first_pick"] <= r["oracle_pick"] + 1e-9
    capsys.readouterr()

    # the rule on entropy + miss map, played on the cache: a map whose mass sits in one spot makes a heavy weight
    # zoom the window around it first, and zooming it zeroes that mass
    from zoomdet.envs.zoom_env import ZoomEnv
    from zoomdet.zoom.windows import window_boxes

    cp = load_benchmark("cache_policies")
    assert cp.main(["--cache", str(cache.root), "--dataset", "tiny", "--budget", "0.6", "--stop-gain", "0",
                    "--miss", str(head_path), "--miss-beta", "1", "1e6"]) == 0
    rows = {r["policy"]: r for r in json.loads((tmp_path / "cache_policies.json").read_text())}
    assert {"greedy-entropy", "greedy-entropy+miss@1", "greedy-entropy+miss@1e+06"} <= set(rows)
    for name in ("greedy-entropy+miss@1", "greedy-entropy+miss@1e+06"):
        assert rows[name]["pixels_ratio"] <= 0.6 + 1e-9 and 0 <= rows[name]["ap"] <= 1
    capsys.readouterr()

    class Spot:  # a miss map with all its mass in one 8-px cell near (290, 200)
        coarse_scale = 0.5

        def predict(self, image):
            probs = torch.zeros(30, 40)
            probs[25, 36] = 1.0
            return probs, (8.0, 8.0), None

    env = ZoomEnv(cache.root, state="entropy", stop_gain=0.0, max_pixels_ratio=1.0, order="sequential")
    env.reset(options={"index": 0})
    spot = cp.EntropyMissMap(Spot(), lambda image_id: None, beta=1e6)
    boxes = window_boxes(env.candidates)
    sums = spot(env).window_sums(boxes)
    holds = (boxes[:, 0] <= 288) & (boxes[:, 2] >= 296) & (boxes[:, 1] <= 200) & (boxes[:, 3] >= 208)
    assert holds.any() and sums[holds].min() > 1e5 > sums[~holds].max()
    env.step(int(np.flatnonzero(holds)[0]))
    assert spot(env).miss.window_sums(boxes[holds]).max() < 1e-9  # zoomed: the spot is gone from the miss map

    # bad input: options out of range, a file that is not a miss map, a map of another detector or coarse scale
    for bad, message in ((["--miss-iou", "0"], "must be"), (["--miss-score", "1.5"], "must be"),
                         (["--epochs", "0"], "must be"), (["--pos-weight", "-1"], "must be"),
                         (["--val-data", str(synth_small)], "go together")):
        with pytest.raises(SystemExit):
            mm.main(["--config", str(cfg), "--data", str(synth_small), "--out", str(tmp_path / "x.pt"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SystemExit):
        ws.main(["--cache", str(cache.root), "--miss", str(head_path), "--miss-beta", "0", "--dataset", "tiny"])
    assert "--miss-beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cp.main(["--cache", str(cache.root), "--dataset", "tiny", "--miss", str(head_path), "--miss-beta", "-1"])
    assert "--miss-beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cp.main(["--cache", str(cache.root), "--dataset", "tiny", "--miss", str(tmp_path / "none.pt")])
    assert "miss map checkpoint not found" in capsys.readouterr().err
    for name, change, message in (("other.pt", {"detector_id": "other"}, "trained on detector other"),
                                  ("scale.pt", {"coarse_scale": 0.25}, "reads the coarse view at 0.25"),
                                  ("notmiss.pt", {"kind": "rnet"}, "not a miss map")):
        torch.save({**saved, **change}, tmp_path / name)
        with pytest.raises(SystemExit):
            ws.main(["--cache", str(cache.root), "--miss", str(tmp_path / name), "--dataset", "tiny"])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ws.main(["--cache", str(cache.root), "--miss", str(tmp_path / "none.pt"), "--dataset", "tiny"])
    assert "miss map checkpoint not found" in capsys.readouterr().err


def test_cache_policies_benchmark_rolls_the_rules_out_on_a_cache(monkeypatch, tmp_path, capsys):
    import zoomdet.eval.results as results

    cache = write_fake_cache(tmp_path / "cache", missed_records(), zoom=ZOOM)
    mod = load_benchmark("cache_policies")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert mod.main(["--cache", str(cache), "--dataset", "toy", "--budget", "0.45", "0.8"]) == 0
    rows = json.loads((tmp_path / "cache_policies.json").read_text())
    by = {(r["policy"], r["budget"]): r for r in rows}
    assert set(by) == {("coarse", None)} | {(p, b) for p in ("greedy-entropy", "random") for b in (0.45, 0.8)}
    coarse = by["coarse", None]
    assert coarse["pixels_ratio"] == pytest.approx(0.25) and coarse["images"] == 9 and coarse["fine"] == "exact"
    for b in (0.45, 0.8):
        # the coarse pass found two of each image's four small objects, at 0.3: entropy points at them and the
        # fine pass finds all four; COCOeval over the cache's nine images sees it
        ent = by["greedy-entropy", b]
        assert ent["ap"] > coarse["ap"] + 0.05 and ent["zoomed_share"] == 1.0
        assert 0.25 < ent["pixels_ratio"] <= b + 1e-6 and by["random", b]["pixels_ratio"] <= b + 1e-6
        assert ent["ap"] >= by["random", b]["ap"]
    assert "greedy-entropy" in capsys.readouterr().out
    for bad in (["--budget", "0"], ["--agent", str(tmp_path / "none.zip")]):
        with pytest.raises(SystemExit):
            mod.main(["--cache", str(cache), "--dataset", "toy", *bad])
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(tmp_path / "none"), "--dataset", "toy"])
    assert "no rollout cache" in capsys.readouterr().err


def feedback_record(image_id: int) -> CacheRecord:
    """A 320x240 image with objects the coarse pass half sees: in small window 4 it finds two of four objects at
    0.3 and the fine pass all four at 0.95; three objects to their right, in small window 5, it does not see at
    all; a false box at 0.3 in window 12 is all the entropy left once window 4 is zoomed."""
    windows, reach = cached_windows(W, H, ZOOM)
    box = lambda x, y: [x - 5, y - 5, x + 5, y + 5]  # noqa: E731
    seen, missed, hidden = [box(40, 30), box(40, 60)], [box(110, 30), box(110, 55)], [box(x, 40) for x in (150, 170, 190)]
    gt = seen + missed + hidden
    false = box(256, 192)
    coarse = D(seen + [false], [0.3, 0.3, 0.3])

    def fine_in(w: Window) -> Detections:
        inside = lambda b: b[0] >= w.x0 and b[2] <= w.x1 and b[1] >= w.y0 and b[3] <= w.y1  # noqa: E731
        found = [b for b in gt if inside(b)]
        return D(found + [false] * inside(false), [0.95] * len(found) + [0.3] * inside(false))

    return CacheRecord(image_id, W, H, coarse, windows, reach, [fine_in(w) for w in windows], torch.tensor(gt),
                       torch.ones(len(gt), dtype=torch.long), torch.zeros(len(gt), dtype=torch.bool))


def test_zoom_feedback_benchmark_scores_the_fine_passs_finds_against_the_rule(monkeypatch, tmp_path, capsys):
    """``benchmarks/zoom_feedback.py``: beta 0 is ``greedy-entropy``'s pick; the new finds of window 4 point at the
    objects next to them, which the rule (ranking on entropy only) never zooms; the oracle bounds every pick."""
    import zoomdet.eval.results as results

    mod = load_benchmark("zoom_feedback")
    points = np.array([[5.0, 5.0], [30.0, 5.0]])
    assert mod.point_box_distance(points, np.array([[0.0, 0.0, 10.0, 10.0]]))[:, 0] == pytest.approx([0.0, 20.0])
    rec = feedback_record(1)
    assert mod.new_finds(rec.coarse, [rec.fine[4]], score=0.5).tolist() == [[110.0, 30.0], [110.0, 55.0]]
    cache = write_fake_cache(tmp_path / "cache", [feedback_record(i + 1) for i in range(3)], zoom=ZOOM)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)
    assert mod.main(["--cache", str(cache), "--dataset", "toy", "--budget", "0.8", "--beta", "0", "4"]) == 0
    rows = {r["beta"]: r for r in json.loads((tmp_path / "zoom_feedback.json").read_text())}
    assert rows[0]["decisions"] == 3 and rows[0]["images"] == 3
    assert rows[0]["pick"] == pytest.approx(rows[0]["rule"]) and rows[0]["share"] == pytest.approx(0.0)
    assert rows[0]["rule"] == pytest.approx(0.0, abs=1e-6)  # the false box's window adds nothing
    assert rows[4]["pick"] > 10 and rows[4]["share"] > 0.5  # the hidden objects' window
    assert all(r["oracle"] >= r["pick"] - 1e-9 for r in rows.values())
    assert "decisions after the first" in capsys.readouterr().out
    for bad in (["--budget", "0"], ["--sigma", "0"], ["--beta", "-1"], ["--budget", "0.3"]):
        with pytest.raises(SystemExit):
            mod.main(["--cache", str(cache), "--dataset", "toy", *bad])
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(tmp_path / "none"), "--dataset", "toy"])


def test_window_features_describe_each_window_and_follow_the_zoom(toy_cache):
    from gymnasium.utils.env_checker import check_env

    from zoomdet.envs.zoom_env import WINDOW_FEATURES

    env = make(toy_cache, state="entropy", window_features=True).unwrapped
    check_env(env, skip_render_check=True)
    col = {n: i for i, n in enumerate(WINDOW_FEATURES)}
    obs, _ = env.reset(options={"index": 0})  # image 0: the four small objects inside window 4
    f = obs["windows"]
    assert f.shape == (env.num_candidates + 1, len(WINDOW_FEATURES)) and f.dtype == np.float32
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    assert f[4, col["entropy"]] == pytest.approx(np.log1p(4 * h(0.3)), rel=1e-3)
    assert f[4, col["small"]] == pytest.approx(np.log1p(4.0), rel=1e-3)
    assert f[4, col["unzoomed"]] == pytest.approx(1.0)
    assert f[:-1, col["stop"]].sum() == 0 and f[-1, col["stop"]] == 1 and not f[-1, :col["cost"] + 1].any()
    cost = env.candidates[4].input_pixels / (W * H)
    assert f[4, col["cost"]] == pytest.approx(cost) and f[0, col["budget_left"]] == pytest.approx(1.0 - 0.25)
    obs2, *_ = env.step(4)
    g = obs2["windows"]
    # the zoomed window holds nothing more; the budget and steps moved on for every row
    assert g[4, col["entropy"]] == pytest.approx(0.0, abs=1e-6) and g[4, col["unzoomed"]] == pytest.approx(0.0, abs=1e-6)
    assert g[-1, col["budget_left"]] == pytest.approx(0.75 - env.zoomed[0].input_pixels / (W * H))
    assert g[-1, col["steps"]] == pytest.approx(1 / env.config.max_steps)
    assert g[-1, col["entropy_left"]] < f[-1, col["entropy_left"]]
    # without the option there is no windows observation
    assert "windows" not in make(toy_cache, state="entropy").unwrapped.reset(options={"index": 0})[0]


def test_window_density_columns_make_greedy_entropy_one_column(toy_cache):
    """``window_extras: [density]`` appends each window's sums per unit of cost; ranking the available windows by
    ``entropy_per_cost`` is ``greedy-entropy``'s pick, and the first columns are the plain option's."""
    from zoomdet.envs.zoom_env import WINDOW_EXTRAS, WINDOW_FEATURES
    from zoomdet.rnet.policies import greedy_choice
    from zoomdet.zoom.windows import window_boxes

    plain = make(toy_cache, state="entropy", window_features=True).unwrapped
    env = make(toy_cache, state="entropy", window_features=True, window_extras=["density"]).unwrapped
    cols = env.config.window_columns
    assert cols == WINDOW_FEATURES + WINDOW_EXTRAS["density"] and env.observation_space["windows"].shape[-1] == len(cols)
    c = {n: i for i, n in enumerate(cols)}
    picks = 0
    for index in range(len(env.records)):
        obs, _ = env.reset(options={"index": index})
        boxes = window_boxes(env.candidates)
        pixels = np.array([w.source_pixels for w in env.candidates], dtype=np.float64)
        base, _ = plain.reset(options={"index": index})
        for _ in range(3):
            f = obs["windows"]
            np.testing.assert_array_equal(f[:, :len(WINDOW_FEATURES)], base["windows"])
            assert not f[-1, len(WINDOW_FEATURES):].any()  # the stop row has no window to measure
            k = len(env.candidates)
            sums = env.maps[0].window_sums(boxes)  # entropy, zeroed where zoomed
            np.testing.assert_allclose(f[:k, c["entropy_per_cost"]], np.log1p(sums / f[:k, c["cost"]]), rtol=1e-4, atol=1e-5)
            avail = env.action_masks()[:-1]
            rule = greedy_choice(env.maps[0], boxes, pixels, avail)
            if rule is None:
                break
            dens = np.where(avail & (sums > 0), f[:k, c["entropy_per_cost"]], -np.inf)
            assert int(np.argmax(dens)) == rule
            picks += 1
            obs, _, done, trunc, _ = env.step(rule)
            base, *_ = plain.step(rule)
            if done or trunc:
                break
    assert picks >= len(env.records)


def test_class_columns_split_the_density_by_category_and_need_the_category_ids(toy_cache):
    """``window_extras: [classes]`` appends, per category id, the entropy and score mass of that class's coarse
    boxes per unit of cost: on the toy images every box is class 1, so class 1's columns are the class-blind
    density columns and class 2's are zero. Without ids, the environment reads them from the cache's detector
    checkpoint, and says what to set when it cannot."""
    from zoomdet.envs.zoom_env import WINDOW_FEATURES, ZoomEnvConfig

    env = make(toy_cache, state="entropy", window_features=True, window_extras=["density", "classes"],
               classes=[1, 2]).unwrapped
    cols = env.config.window_columns
    assert cols[-4:] == ("entropy_per_cost_c1", "scores_per_cost_c1", "entropy_per_cost_c2", "scores_per_cost_c2")
    c = {n: i for i, n in enumerate(cols)}
    obs, _ = env.reset(options={"index": 0})
    for _ in range(2):
        f, k = obs["windows"], len(env.candidates)
        assert f.shape == (k + 1, len(WINDOW_FEATURES) + 8) and f[:k, c["entropy_per_cost"]].any()
        np.testing.assert_allclose(f[:, c["entropy_per_cost_c1"]], f[:, c["entropy_per_cost"]], atol=1e-6)
        np.testing.assert_allclose(f[:, c["scores_per_cost_c1"]], f[:, c["scores_per_cost"]], atol=1e-6)
        assert not f[:, [c["entropy_per_cost_c2"], c["scores_per_cost_c2"]]].any()
        obs, *_ = env.step(4)  # zoomed: the window's class columns fall with the rest
    assert obs["windows"][4, c["entropy_per_cost_c1"]] == pytest.approx(0.0, abs=1e-6)

    with pytest.raises(ValueError, match="set classes"):  # the toy cache's checkpoint is not a file
        make(toy_cache, state="entropy", window_features=True, window_extras=["classes"])
    with pytest.raises(ValueError, match="distinct category ids"):
        ZoomEnvConfig(state="entropy", window_features=True, window_extras=["classes"], classes=[1, 1])
    with pytest.raises(ValueError, match="needs the detector's category ids"):
        ZoomEnvConfig(state="entropy", window_features=True, window_extras=["classes"]).window_columns


def test_position_columns_are_each_windows_centre_in_fractions_of_the_image(toy_cache):
    """``window_extras: [position]`` appends the candidate window's centre over the image's width and height:
    static (a zoom leaves it), 0 on the stop row."""
    env = make(toy_cache, state="entropy", window_features=True, window_extras=["position", "density"]).unwrapped
    c = {n: i for i, n in enumerate(env.config.window_columns)}
    assert env.config.window_columns[-6:-4] == ("center_x", "center_y")
    obs, _ = env.reset(options={"index": 1})
    rec, k = env.records[1], len(env.candidates)
    want = np.array([[(w.x0 + w.x1) / (2 * rec.width), (w.y0 + w.y1) / (2 * rec.height)] for w in env.candidates])
    assert want.min() > 0 and want.max() < 1 and len(np.unique(want[:, 1])) > 1
    for _ in range(2):
        np.testing.assert_allclose(obs["windows"][:k, [c["center_x"], c["center_y"]]], want, atol=1e-6)
        assert not obs["windows"][k, [c["center_x"], c["center_y"]]].any()
        obs, *_ = env.step(4)


def test_class_columns_read_the_category_ids_from_the_caches_detector(tiny_checkpoint, tmp_path, monkeypatch):
    from tests.conftest import write_fake_cache
    from zoomdet.detector.detector import checkpoint_categories

    cats = checkpoint_categories(tiny_checkpoint)
    rng = np.random.default_rng(0)
    root = write_fake_cache(tmp_path / "cache", [toy_record(i + 1, i, rng) for i in range(3)], zoom=ZOOM)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "checkpoint": str(tiny_checkpoint)}))
    env = make(root, state="entropy", window_features=True, window_extras=["classes"]).unwrapped
    assert env.config.classes == tuple(sorted(cats)) == (1, 2, 3)
    assert env.reset(options={"index": 0})[0]["windows"].shape[-1] == len(env.config.window_columns)
    # benchmarks/agent_returns.py plays a class-column variant on that cache, the ids taken from it as well
    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", tmp_path / "results")
    assert load_benchmark("agent_returns").main([
        "--cache", str(root), "--rnet", "unused.pt", "--dataset", "toy-cls", "--untrained-seeds", "0",
        "--variant", "v=state:entropy,lam:1.0,window_features:true,window_extras:[density,classes]"]) == 0
    rows = json.loads((tmp_path / "results" / "agent_returns.json").read_text())
    assert {r["policy"] for r in rows} == {"greedy-entropy", "v untrained"} and rows[0]["images"] == 3


def test_feature_qnet_learns_and_the_live_agent_builds_the_envs_windows(toy_cache, tmp_path):
    """DQN with the per-window feature head beats random on the toy cache, and the live policy's ``windows``
    observation equals the environment's, before and after a zoom."""
    from zoomdet.agents import AgentPolicy
    from zoomdet.agents.qnet import FeatureQHead, random_masked_actions
    from zoomdet.agents.train import TrainArgs, train_agent
    from zoomdet.zoom.engine import EpisodeState

    kw = {"state": "entropy", "lam": 1.0, "window_features": True, "window_extras": ["density", "classes", "position"],
          "classes": [1, 2]}
    hp = {"learning_starts": 200, "exploration_fraction": 0.5, "target_update_interval": 100, "learning_rate": 2e-3,
          "buffer_size": 5000}
    run = train_agent(TrainArgs(cache=str(toy_cache), n_timesteps=2500, eval_freq=-1, progress=False, env_kwargs=kw,
                                hyperparams=hp, log_folder=str(tmp_path / "logs"), conf_file="configs/agents/dqn.yml"))
    policy = AgentPolicy.from_path(run / "ZoomDet-v0.zip")
    assert isinstance(policy.model.q_net.q_net, FeatureQHead)
    env = make(toy_cache, **kw).unwrapped
    rng = np.random.default_rng(0)
    learned = _mean_return(env, lambda o: int(policy.model.predict(o, deterministic=True)[0]))
    random = _mean_return(env, lambda o: int(random_masked_actions(o, rng)))
    assert learned > random + 0.5, (learned, random)

    seen = {}
    orig = policy.model.predict
    policy.model.predict = lambda obs, **k: (seen.setdefault("obs", []).append(obs), orig(obs, **k))[1]
    env = make(toy_cache, **{**kw, "max_pixels_ratio": 0.6}).unwrapped
    env_obs, _ = env.reset(options={"index": 0})
    rec = env.records[0]
    state = EpisodeState(rec.width, rec.height, rec.coarse, env.candidates, [], 0.25, env.gain.copy(),
                         env.action_masks()[:-1], np.random.default_rng(0), max_pixels_ratio=0.6)
    policy.select(state)
    np.testing.assert_allclose(seen["obs"][-1]["windows"], env_obs["windows"], atol=1e-6)
    env_obs, *_ = env.step(4)
    state.zoomed, state.zoomed_windows, state.gain = [4], list(env.zoomed), env.gain.copy()
    state.pixels_ratio, state.available = env.pixels_ratio, env.action_masks()[:-1]
    policy.select(state)
    np.testing.assert_allclose(seen["obs"][-1]["windows"], env_obs["windows"], atol=1e-6)


def test_ap_compare_benchmark_bootstraps_each_policy_against_the_rule(monkeypatch, tmp_path, capsys):
    from tests.test_engine import _bootstrap_world

    mod = load_benchmark("ap_compare")
    assert mod.variant_of("dqn:qnet-win-s1/best_model") == "qnet-win" and mod.variant_of("greedy") is None
    assert mod.variant_of("dqn-ensemble:qnet-win-s0+qnet-win-s1") == "qnet-win-ensemble"
    assert mod.variant_of("dqn-ensemble:qnet-win-s0+qnet-ap-s1") is None  # an ensemble of two variants is its own

    gt, good, poor = _bootstrap_world()
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt.dataset))
    ev = tmp_path / "eval"
    (ev / "detections").mkdir(parents=True)
    runs = {"greedy-entropy": poor, "dqn:a-s0/best_model": good, "dqn:a-s1/best_model": poor,
            "dqn-ensemble:a-s2+a-s3": good, "dqn-ensemble:a-s4+a-s5": good}
    policies = []
    for name, dets in runs.items():
        f = f"detections/{name.replace(':', '_').replace('/', '_')}@0.45.json"
        (ev / f).write_text(json.dumps(dets))
        policies.append({"name": name, "budget": 0.45, "detections_file": f})
    (ev / "report.json").write_text(json.dumps({"data": str(gt_file), "image_ids": list(range(1, 13)),
                                                "policies": policies}))
    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", tmp_path / "results")
    assert mod.main(["--eval", str(ev), "--dataset", "toy", "--resamples", "50"]) == 0
    rows = json.loads((tmp_path / "results" / "ap_compare.json").read_text())
    by = {r["policy"]: r for r in rows}
    assert set(by) == {"dqn:a-s0/best_model", "dqn:a-s1/best_model", "a (mean of 2 seeds)", "dqn-ensemble:a-s2+a-s3",
                       "dqn-ensemble:a-s4+a-s5", "a-ensemble (mean of 2 seeds)"}
    assert by["dqn:a-s0/best_model"]["ci_low"] > 0 and by["dqn:a-s1/best_model"]["diff"] == 0
    assert by["a (mean of 2 seeds)"]["diff"] == pytest.approx(by["dqn:a-s0/best_model"]["diff"] / 2)
    assert by["a-ensemble (mean of 2 seeds)"]["diff"] == pytest.approx(by["dqn:a-s0/best_model"]["diff"])
    assert "a (mean of 2 seeds)" in capsys.readouterr().out
    # a baseline without a budget (fine) is compared with every policy at every budget
    (ev / "detections/fine.json").write_text(json.dumps(good))
    report = json.loads((ev / "report.json").read_text())
    report["policies"].append({"name": "fine", "budget": None, "detections_file": "detections/fine.json"})
    (ev / "report.json").write_text(json.dumps(report))
    assert mod.main(["--eval", str(ev), "--dataset", "toy-fine", "--baseline", "fine", "--resamples", "50"]) == 0
    vs_fine = {r["policy"]: r for r in json.loads((tmp_path / "results" / "ap_compare.json").read_text())
               if r["dataset"] == "toy-fine"}
    assert vs_fine["greedy-entropy"]["diff"] < 0 and vs_fine["greedy-entropy"]["ci_high"] < 0
    assert vs_fine["dqn:a-s0/best_model"]["diff"] == 0 and {r["baseline"] for r in vs_fine.values()} == {"fine"}
    with pytest.raises(SystemExit, match="no 'greedy' run"):
        mod.main(["--eval", str(ev), "--dataset", "toy", "--baseline", "greedy"])
    with pytest.raises(SystemExit, match="report.json not found"):
        mod.main(["--eval", str(tmp_path / "nowhere"), "--dataset", "toy"])


def test_feature_head_and_window_features_refuse_bad_input(toy_cache):
    from zoomdet.agents.qnet import MaskableDQN, ZoomDQNPolicy
    from zoomdet.envs.zoom_env import observe, window_geometry

    plain = make(toy_cache, state="entropy").unwrapped
    geometry = {**window_geometry(plain), "head": "features"}
    with pytest.raises(ValueError, match="window_features"):
        MaskableDQN(ZoomDQNPolicy, plain, policy_kwargs=geometry, learning_starts=10, buffer_size=100)
    with pytest.raises(ValueError, match="head must be one of"):
        MaskableDQN(ZoomDQNPolicy, plain, policy_kwargs={**geometry, "head": "transformer"}, buffer_size=100)
    env = make(toy_cache, state="entropy", window_features=True).unwrapped
    assert window_geometry(env)["head"] == "features"
    env.reset(options={"index": 0})
    with pytest.raises(ValueError, match="windows array of shape"):
        observe(env.gain, [], env.action_masks(), 1.0, env.config)  # the rows are required with the option
    with pytest.raises(ValueError, match="set window_features"):
        make(toy_cache, state="entropy", window_extras=["density"])
    with pytest.raises(ValueError, match="window_extras must be distinct names"):
        make(toy_cache, state="entropy", window_features=True, window_extras=["density", "texture"])


FEATURE_AGENT = {"state": "entropy", "lam": 1.0, "window_features": True, "window_extras": ["density"]}


def toy_agent(toy_cache, folder, seed: int, **env_kwargs) -> str:
    """A 300-step DQN agent of the window-feature Q-net (:data:`FEATURE_AGENT`, updated by ``env_kwargs``) trained
    on the toy cache into ``folder``; its ``.zip``."""
    from zoomdet.agents.train import TrainArgs, train_agent

    run = train_agent(TrainArgs(cache=str(toy_cache), n_timesteps=300, eval_freq=-1, progress=False, seed=seed,
                                env_kwargs={**FEATURE_AGENT, **env_kwargs},
                                hyperparams={"learning_starts": 100, "buffer_size": 1000}, log_folder=str(folder),
                                conf_file="configs/agents/dqn.yml"))
    return str(run / "ZoomDet-v0.zip")


def test_dqn_ensemble_picks_by_the_mean_q_value_and_refuses_mismatched_models(toy_cache, tmp_path, monkeypatch):
    """``a.zip+b.zip`` is one policy on the mean of the models' Q-values: live through the engine, in the cache
    benchmark, and refused for one model or models trained on other observations."""
    import torch

    from tests.conftest import StubDetector
    from zoomdet.agents import AgentPolicy
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import make_policy

    kw = dict(FEATURE_AGENT)

    def train(seed, **extra):
        return toy_agent(toy_cache, tmp_path / f"logs{seed}", seed, **extra)

    a, b = train(0), train(1)
    policy = make_policy(f"{a}+{b}", detector_id="fake")
    assert isinstance(policy, AgentPolicy) and len(policy.ensemble) == 1 and policy.name.startswith("dqn-ensemble:")
    single = [AgentPolicy.from_path(p) for p in (a, b)]
    env = make(toy_cache, **kw).unwrapped
    for index in range(len(env.records)):
        obs, _ = env.reset(options={"index": index})
        obs["mask"][[0, 4]] = 0  # masked windows stay out of the ensemble's pick
        qs = []
        for agent in single:
            tensor, _ = agent.model.policy.obs_to_tensor(obs)
            with torch.no_grad():
                qs.append(agent.model.q_net(tensor)[0].numpy())
        np.testing.assert_allclose(policy.mean_q_values(obs), (qs[0] + qs[1]) / 2, rtol=1e-5)
        pick = policy.act(obs)
        assert pick == int(np.argmax(qs[0] + qs[1])) and pick not in (0, 4)
        twice = AgentPolicy.from_paths([a, a])  # one model twice is that model
        assert twice.act(obs) == single[0].act(obs)
    boxes = torch.tensor([[40.0, 40, 48, 48], [200, 150, 260, 200]])
    engine = ZoomEngine(StubDetector(boxes, torch.tensor([1, 1]), min_px=6), ZOOM)
    res = engine.run(torch.rand(3, H, W), policy, max_pixels_ratio=0.6)
    assert res.cost.pixels_ratio <= 0.6 + 1e-9

    with pytest.raises(ValueError, match="at least two"):
        AgentPolicy.from_paths([a])
    other = train(2, lam=2.0)
    with pytest.raises(ValueError, match=r"other environment options .*\(lam\)"):
        make_policy(f"{a}+{other}")
    with pytest.raises(FileNotFoundError):
        make_policy(f"{a}+{tmp_path / 'none.zip'}")

    # the cache benchmark plays the ensemble too
    mod = load_benchmark("cache_policies")
    results_dir = tmp_path / "results"
    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", results_dir)
    assert mod.main(["--cache", str(toy_cache), "--dataset", "toy", "--budget", "0.6", "--agent", f"ens={a}+{b}"]) == 0
    rows = json.loads((results_dir / "cache_policies.json").read_text())
    assert {r["policy"] for r in rows} >= {"ens", "greedy-entropy"}


def test_an_agent_with_an_override_margin_plays_the_rule_unless_it_beats_it_by_the_margin(toy_cache, tmp_path,
                                                                                        monkeypatch):
    """``policies.agent_override_margin``: the rule's action unless the agent's best Q-value beats it by more than
    the margin; margin 0 is the agent, a huge one ``greedy-entropy`` itself, live and on the cache."""
    from tests.conftest import StubDetector
    from zoomdet.agents.policy import AgentPolicy, override_action
    from zoomdet.envs.zoom_env import ZoomEnvConfig
    from zoomdet.rnet.model import EntropyGain
    from zoomdet.rnet.policies import GreedyPolicy
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import PolicyConfig, make_policy

    q = np.array([1.0, 3.0, 2.0, 0.5])
    assert override_action(q, 2, 0.0) == 1 and override_action(q, 2, 0.99) == 1
    assert override_action(q, 2, 1.0) == 2 and override_action(q, 3, 2.0) == 1 and override_action(q, 1, 5.0) == 1

    path = toy_agent(toy_cache, tmp_path / "logs", 0)
    agent = make_policy(path)
    assert agent.override_margin is None
    policy = make_policy(path, PolicyConfig(agent_override_margin=0.5, greedy_stop=0.2))
    assert policy.name == f"{agent.name}~override0.5" and (policy.override_margin, policy.rule_stop) == (0.5, 0.2)

    # live, through the engine: margin 0 picks the agent's windows, a huge margin the rule's, on several images.
    # Windows that look alike to the Q-net tie exactly (same features, same Q-value); margin 0 then keeps the rule's
    # action among the agent's best, where the agent alone takes the lowest index, so each margin-0 decision is
    # checked against the agent's Q-values, and whole episodes are compared where no decision tied.
    import zoomdet.agents.policy as agent_policy

    decisions = []
    real_override = agent_policy.override_action

    def spy(q, rule_action, margin):
        a = real_override(q, rule_action, margin)
        decisions.append((np.asarray(q, dtype=np.float64), int(rule_action), margin, a))
        return a

    monkeypatch.setattr(agent_policy, "override_action", spy)
    rule, never, always = GreedyPolicy(EntropyGain(), 0.1), agent.overriding(1e9, 0.1), agent.overriding(0.0)
    # an agent whose Q-values rank the allowed windows by index (highest first, stop last): it disagrees with the
    # rule, so margin 0 must leave the rule's windows for its own, and a huge margin must not
    ranked = {m: agent.overriding(m, 0.1) for m in (0.0, 1e9)}
    for p in ranked.values():
        p.mean_q_values = lambda obs: np.where(obs["mask"].astype(bool), np.r_[np.arange(len(obs["mask"]) - 1), -1.0],
                                               -1e8)
    picked, departed = {}, 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        xy = rng.uniform([0, 0], [W - 40, H - 40], size=(6, 2))
        side = rng.uniform(8, 30, size=(6, 1))
        boxes = torch.tensor(np.hstack([xy, xy + side]), dtype=torch.float32)
        engine = ZoomEngine(StubDetector(boxes, torch.ones(6, dtype=torch.long), min_px=12), ZOOM)
        image = torch.rand(3, H, W)
        policies = {"rule": rule, "never": never, "always": always, "agent": agent, "ranked-never": ranked[1e9],
                    "ranked-always": ranked[0.0]}
        for name, p in policies.items():
            decisions.clear()
            res = engine.run(image, p, max_pixels_ratio=0.6)
            picked[seed, name] = [r.candidate for r in res.regions]
            if name == "always":
                tied = False
                for q, rule_action, margin, a in decisions:
                    best = np.flatnonzero(q >= q.max() - 1e-6)
                    assert margin == 0.0 and a in best  # never an action below the agent's best
                    tied |= len(best) > 1
                    assert a == (rule_action if rule_action in best else best[0])
            if name == "ranked-always":  # the highest allowed window each step, whatever the rule says
                assert decisions and all(a == np.flatnonzero(q > -1e7)[:-1].max() for q, _, _, a in decisions)
                departed += sum(a != rule_action for _, rule_action, _, a in decisions)
        assert picked[seed, "never"] == picked[seed, "rule"] == picked[seed, "ranked-never"]
        if not tied:
            assert picked[seed, "always"] == picked[seed, "agent"]
    assert any(picked[s, "rule"] for s in range(3))  # the rule zoomed somewhere: the comparison means something
    assert departed  # margin 0 left the rule's windows for the agent's

    # on the cache: the same two ends, row for row
    mod = load_benchmark("cache_policies")
    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", tmp_path / "results")
    assert mod.main(["--cache", str(toy_cache), "--dataset", "toy", "--budget", "0.6", "--agent", f"ag={path}",
                     "--override-margin", "0", "1e9"]) == 0
    rows = {(r["policy"], r["budget"]): r for r in json.loads((tmp_path / "results" / "cache_policies.json").read_text())}
    for key in ("ap", "pixels_ratio", "zoomed_share"):
        assert rows["ag~override1e+09", 0.6][key] == pytest.approx(rows["greedy-entropy", 0.6][key])
        assert rows["ag~override0", 0.6][key] == pytest.approx(rows["ag", 0.6][key])

    with pytest.raises(ValueError, match="agent_override_margin must be >= 0"):
        PolicyConfig(agent_override_margin=-0.1)
    with pytest.raises(ValueError, match="must be >= 0"):
        agent.overriding(float("nan"))
    plain = ZoomEnvConfig(state="entropy")
    with pytest.raises(ValueError, match="window_features only"):
        AgentPolicy(agent.model, "dqn", plain, EntropyGain(), override_margin=0.5)
    obs, _ = make(toy_cache, **FEATURE_AGENT).unwrapped.reset(options={"index": 0})
    with pytest.raises(ValueError, match="pass the rule's action"):
        policy.act(obs)
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(toy_cache), "--dataset", "toy", "--agent", path, "--override-margin", "-1"])


def test_agent_returns_benchmark_replays_trains_evaluation_and_the_untrained_start(toy_cache, tmp_path, monkeypatch,
                                                                                  capsys):
    """benchmarks/agent_returns.py: a trained agent's return equals train's own last evaluation of it, the
    untrained Q-net of seed S has the weights ``zoomdet train --seed S`` starts from, and the rules are played."""
    import torch

    from zoomdet.agents.policy import algorithm_class
    from zoomdet.agents.train import TrainArgs, train_agent

    kw = dict(FEATURE_AGENT)
    args = TrainArgs(cache=str(toy_cache), eval_cache=str(toy_cache), n_timesteps=600, eval_freq=600, progress=False,
                     seed=3, env_kwargs=kw, hyperparams={"learning_starts": 100, "buffer_size": 1000},
                     log_folder=str(tmp_path / "logs"), conf_file="configs/agents/dqn.yml")
    run = train_agent(args)
    trained_eval = float(np.load(run / "evaluations.npz")["results"][-1].mean())
    # no gradient step before learning_starts: that model holds its initial weights
    start = train_agent(TrainArgs(**{**args.__dict__, "n_timesteps": 50, "eval_freq": -1}))

    mod = load_benchmark("agent_returns")
    monkeypatch.setattr("zoomdet.eval.results.RESULTS_DIR", tmp_path / "results")
    variant = "v=state:entropy,lam:1.0,window_features:true,window_extras:[density]"
    made = {}  # the untrained models the script builds, by seed
    from zoomdet.agents import qnet

    real = qnet.MaskableDQN

    class Capture(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if k.get("seed") is not None:
                made[k["seed"]] = self

    monkeypatch.setattr(qnet, "MaskableDQN", Capture)
    assert mod.main(["--cache", str(toy_cache), "--rnet", "unused.pt", "--dataset", "toy", "--variant", variant,
                     "--untrained-seeds", "3", "--agent", f"final={run / 'ZoomDet-v0.zip'}"]) == 0
    rows = {r["policy"]: r for r in json.loads((tmp_path / "results" / "agent_returns.json").read_text())}
    assert set(rows) == {"greedy-entropy", "v untrained", "final"}  # no greedy: the variant has no R-net map
    assert rows["final"]["mean_return"] == pytest.approx(trained_eval, abs=1e-4)
    initial = algorithm_class("dqn").load(str(start / "ZoomDet-v0.zip")).q_net.state_dict()
    for k, v in made[3].q_net.state_dict().items():
        assert torch.equal(v, initial[k]), k
    assert rows["greedy-entropy"]["mean_return"] > 0  # the toy's small objects are found by zooming on entropy
    assert "v untrained" in capsys.readouterr().out
    # the trained DQN agent's value bias: its first Q-value against the discounted return it then collects
    final = rows["final"]
    assert final["q_bias"] == pytest.approx(final["q_first"] - final["discounted_return"])
    assert "q_bias" not in rows["greedy-entropy"] and "q_bias" not in rows["v untrained"]
    from zoomdet.agents.policy import AgentPolicy
    from zoomdet.envs import ZoomEnv

    env = ZoomEnv(str(toy_cache), **kw, order="sequential", info_detections=False)
    agent = AgentPolicy.from_path(run / "ZoomDet-v0.zip", name="final")
    obs, _ = env.reset(options={"index": 0})
    first_q = float(agent.mean_q_values(obs)[agent.act(obs)])
    agent.model.gamma = 1.0  # undiscounted, the discounted return is the mean return
    bias = mod.value_bias(env, agent)
    assert bias["discounted_return"] == pytest.approx(final["mean_return"], abs=1e-4)
    assert bias["q_first"] == pytest.approx(final["q_first"], abs=1e-5)
    agent.model.gamma = 0.0  # only the first reward counts
    first_rewards = []
    for k in range(len(env.records)):
        obs, _ = env.reset(options={"index": k})
        first_rewards.append(env.step(agent.act(obs))[1])
    assert mod.value_bias(env, agent)["discounted_return"] == pytest.approx(float(np.mean(first_rewards)), abs=1e-5)
    assert len(env.records) > 1 and first_q == pytest.approx(float(agent.mean_q_values(env.reset(options={"index": 0})[0]).max()))
    with pytest.raises(SystemExit):  # an agent of another observation
        plain = train_agent(TrainArgs(**{**args.__dict__, "n_timesteps": 50, "eval_freq": -1,
                                         "env_kwargs": {"state": "entropy", "lam": 1.0}}))
        mod.main(["--cache", str(toy_cache), "--rnet", "x.pt", "--dataset", "toy", "--variant", variant,
                  "--agent", f"p={plain / 'ZoomDet-v0.zip'}"])
    with pytest.raises(SystemExit):
        mod.main(["--cache", str(toy_cache), "--rnet", "x.pt", "--dataset", "toy", "--agent", "no-name.zip"])


def test_large_margin_loss_is_zero_only_when_the_rules_action_leads_by_the_margin():
    from zoomdet.agents.demos import large_margin_loss
    from zoomdet.agents.qnet import MASKED_Q

    q = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, MASKED_Q]])
    # row 0: rule picks 1 (lead 1.0 >= 0.8: 0); row 1: rule picks 1, action 0 is 2.0 above it: 3 + 0.8 - 1
    assert large_margin_loss(q, torch.tensor([1, 1]), 0.8).item() == pytest.approx((0.0 + 2.8) / 2)
    assert large_margin_loss(q, torch.tensor([[1], [0]]), 0.8).item() == pytest.approx(0.0)
    assert large_margin_loss(q, torch.tensor([1, 0]), 1.5).item() == pytest.approx(0.5 / 2)  # lead 1.0 < 1.5
    assert large_margin_loss(q, torch.tensor([2, 0]), 0.0).item() == pytest.approx(2.0 / 2)  # masked never the max


def test_demonstrations_are_the_rules_transitions_and_dqfd_starts_from_the_rule(toy_cache, tmp_path):
    """The demonstration buffer holds the rule's own actions and rewards; pretraining makes the Q-net's argmax the
    rule's action; ``zoomdet train`` evaluates the pretrained net before the first step (its return is the
    rule's), records the rule's own return on those episodes and prints the best model beside it; the saved
    model carries no demonstrations."""
    from stable_baselines3.common.buffers import DictReplayBuffer

    from zoomdet.agents.demos import collect_demonstrations, rule_picker, sequential_mean_return
    from zoomdet.agents.policy import algorithm_class
    from zoomdet.agents.train import TrainArgs, best_model_line, train_agent

    kw = {"state": "entropy", "lam": 1.0, "window_features": True, "window_extras": ["density"]}
    env = make(toy_cache, **kw).unwrapped
    env.reset(seed=5)
    buf = DictReplayBuffer(200, env.observation_space, env.action_space, device="cpu")
    pick = rule_picker("greedy-entropy", stop_gain=0.1)
    stats = collect_demonstrations(env, pick, 12, buf)
    assert stats["transitions"] == buf.size() > 12 and stats["zoomed_share"] == 1.0
    replay = make(toy_cache, **kw).unwrapped  # the same draws again, each action checked against the rule
    replay.reset(seed=5)
    n, total = 0, 0.0
    for _ in range(12):
        obs, _ = replay.reset()
        done = False
        while not done:
            a = pick(replay, obs)
            assert buf.actions[n, 0, 0] == a
            np.testing.assert_array_equal(buf.observations["windows"][n, 0], obs["windows"])
            obs, r, term, trunc, _ = replay.step(a)
            assert buf.rewards[n, 0] == pytest.approx(r) and bool(buf.dones[n, 0]) == (term or trunc)
            n, total, done = n + 1, total + r, term or trunc
    assert n == stats["transitions"] and stats["mean_return"] == pytest.approx(total / 12)

    hp = {"learning_starts": 100, "buffer_size": 1000, "demo_rule": "greedy-entropy", "demo_episodes": 60,
          "demo_pretrain_steps": 400, "learning_rate": 2e-3}
    run = train_agent(TrainArgs(cache=str(toy_cache), eval_cache=str(toy_cache), n_timesteps=300, eval_freq=300,
                                progress=False, env_kwargs=kw, hyperparams=hp, log_folder=str(tmp_path / "logs"),
                                conf_file="configs/agents/dqn.yml"))
    demos = json.loads((run / "demonstrations.json").read_text())
    assert demos["rule"] == "greedy-entropy" and demos["pretrain"]["agreement"] >= 0.9
    assert yaml_load(run / "config.yml")["ZoomDet-v0"]["demo_pretrain_steps"] == 400
    ev = np.load(run / "evaluations.npz")
    assert ev["timesteps"][0] == 0 and len(ev["timesteps"]) == 2
    rule_env = make(toy_cache, **kw, order="sequential").unwrapped
    rule = _mean_return(rule_env, lambda o: pick(rule_env, o), episodes=len(rule_env.records))
    assert ev["results"][0].mean() == pytest.approx(rule, abs=0.05)  # the pretrained net plays the rule
    # the rule's own return on those episodes is recorded, and the last line of training sets the best model beside it
    assert demos["eval_cache_images"] == len(rule_env.records)
    assert demos["eval_cache_return"] == pytest.approx(rule)
    assert sequential_mean_return(rule_env, pick) == pytest.approx(rule)
    best = int(np.argmax(ev["results"].mean(axis=1)))
    line = best_model_line(run)
    assert f"mean return {ev['results'][best].mean():.3f}" in line and f"at step {ev['timesteps'][best]} " in line
    assert line.endswith(f"greedy-entropy on the same episodes: {rule:.3f}")
    assert best_model_line(tmp_path).startswith("no evaluation on an eval cache")
    model = algorithm_class("dqn").load(str(run / "best_model.zip"))
    assert model.demo_buffer is None


def test_the_truth_corrected_demonstrator_takes_the_most_ap_and_otherwise_plays_the_rule(tmp_path):
    """``demo_rule: oracle-ap``: ``ZoomEnv.ap_gains`` is the reward a step would give (NaN where not allowed);
    the demonstrator takes the window of most AP whatever the rule ranks first, leaves ties to the rule, plays
    the rule among the windows that lose nothing when none adds AP, and stops when every window loses AP."""
    import torch

    from zoomdet.agents.demos import rule_picker
    from zoomdet.rnet.policies import greedy_choice
    from zoomdet.zoom.windows import GainMap, window_boxes

    cache = write_fake_cache(tmp_path / "cache", missed_records(), zoom=ZOOM)
    kw = {"state": "entropy", "lam": 0.0, "reward": "ap", "window_features": True, "window_extras": ["density"]}
    env = make(cache, **kw).unwrapped
    oracle, rule = rule_picker("oracle-ap", stop_gain=0.1), rule_picker("greedy-entropy", stop_gain=0.1)
    with pytest.raises(RuntimeError, match="reset"):
        make(cache, **kw).unwrapped.ap_gains()
    disagreed = 0
    for k in range(len(env.records)):
        obs, _ = env.reset(options={"index": k})
        g = env.ap_gains()
        np.testing.assert_array_equal(np.isnan(g), ~env.action_masks()[:-1])
        assert np.nanmax(g) > 0  # the coarse pass missed objects that a window finds
        w = env.candidates[int(np.nanargmin(g))]  # the rule's map points at a window that loses AP ...
        env.maps[0] = GainMap(env._img.record.width, env._img.record.height,
                              torch.tensor([[w.x0, w.y0, w.x1, w.y1]], dtype=torch.float64), torch.tensor([5.0]))
        r, a = rule(env, obs), oracle(env, obs)
        assert g[r] < 0 and g[a] == np.nanmax(g)  # ... and the demonstrator takes the most AP instead
        disagreed += 1
        _, reward, *_ = env.step(a)
        assert reward == pytest.approx(g[a])  # the look-ahead is the step's own reward
    assert disagreed == len(env.records)

    env.reset(options={"index": 0})
    allowed = env.action_masks()[:-1]
    first = rule(env, None)
    lose_first = np.where(np.arange(len(allowed)) == first, -5.0, 0.0)
    boxes, pixels = window_boxes(env.candidates), np.array([w.source_pixels for w in env.candidates], dtype=float)
    second = greedy_choice(env.maps[0], boxes, pixels, allowed & (lose_first == 0))
    assert second not in (None, first)
    for case, gains, expected in (("ties to the rule", np.full(len(allowed), 10.0), first),
                                  ("the rule among the windows that lose nothing", lose_first, second),
                                  ("every window loses AP", np.full(len(allowed), -1.0), env.stop_action)):
        env.ap_gains = lambda gains=gains: np.where(allowed, gains, np.nan)
        assert oracle(env, None) == expected, case
    env.maps[0] = GainMap(env._img.record.width, env._img.record.height, torch.zeros(0, 4), torch.zeros(0))
    env.ap_gains = lambda: np.where(allowed, 0.0, np.nan)
    assert oracle(env, None) == env.stop_action  # nothing to win, and the rule stops here


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_demonstration_options_refuse_bad_input(toy_cache, tmp_path, capsys):
    from zoomdet.agents.demos import DemoConfig, rule_map, rule_picker
    from zoomdet.cli import main

    base = ["train", "--cache", str(toy_cache), "-f", str(tmp_path), "--no-progress", "-n", "10",
            "--env-kwargs", "state:entropy"]
    for hp, message in ((["demo_rule:oracle"], "demo_rule must be one of"),
                        (["demo_rule:greedy-entropy", "demo_margins:1"], "unknown demonstration option"),
                        (["demo_episodes:10"], "need demo_rule"),
                        (["demo_rule:greedy-entropy", "demo_episodes:0"], "demo_episodes must be >= 1"),
                        (["demo_rule:greedy"], "state rnet")):  # greedy ranks on the R-net map, absent here
        assert main(base + ["--hyperparams", *hp]) == 2, hp
        assert message in capsys.readouterr().err, hp
    assert main(base + ["--algo", "ppo_mask", "--hyperparams", "demo_rule:greedy-entropy"]) == 2
    assert "need --algo dqn" in capsys.readouterr().err
    # oracle-ap breaks its ties on greedy-entropy's map, which an environment with the oracle's state lacks
    assert main(base[:-1] + ["state:oracle", "--hyperparams", "demo_rule:oracle-ap"]) == 2
    assert "demo_rule oracle-ap: rule greedy-entropy needs the entropy map" in capsys.readouterr().err
    assert not list(tmp_path.rglob("ZoomDet-v0_*"))  # refused before a run folder was made
    assert DemoConfig.pop_from({"gamma": 0.9}) is None
    env = make(toy_cache, state="oracle").unwrapped
    env.reset()
    with pytest.raises(ValueError, match="needs the entropy map"):
        rule_map(env, "greedy-entropy")
    with pytest.raises(ValueError, match="unknown rule"):
        rule_picker("best")


def test_a_merge_override_trains_for_the_live_merge_and_refuses_bad_fields(toy_cache):
    from zoomdet.zoom.merge import MergeConfig, merge_zoom

    cached = make(toy_cache).unwrapped
    fused = make(toy_cache, merge={"method": "fuse", "fuse_score": "mean"}).unwrapped
    assert cached.zoom.merge.method == "replace"
    assert (fused.zoom.merge.method, fused.zoom.merge.fuse_score) == ("fuse", "mean")
    assert fused.zoom.merge.nms_iou == cached.zoom.merge.nms_iou  # the fields not given stay the cache's
    assert (fused.zoom.windows, fused.zoom.coarse_scale) == (cached.zoom.windows, cached.zoom.coarse_scale)
    answers = []
    for env in (cached, fused):
        env.reset(options={"index": 4})  # cluster in small window 4: coarse boxes at 0.3, fine at 0.95
        _, _, term, _, info = env.step(8)
        assert term
        answers.append(sorted(d["score"] for d in info["detections"]))
        rec = env._img.record
        ref = merge_zoom(rec.coarse.without_features(), [rec.fine[k] for k in env.fine_ids],
                         [rec.windows[k] for k in env.fine_ids], rec.width, rec.height, env.zoom.merge).detections
        assert sorted(ref.scores.tolist()) == pytest.approx(answers[-1])
    # replace keeps the fine 0.95 boxes; fuse with both passes' scores gives the clusters (0.3 + 0.95) / 2
    assert answers[0] == pytest.approx([0.9] + [0.95] * 4)
    assert answers[1] == pytest.approx([0.625] * 4 + [0.9])
    assert fused.zoom.merge == MergeConfig(**{**vars(cached.zoom.merge), "method": "fuse", "fuse_score": "mean"})
    for bad, match in (({"methd": "fuse"}, r"unknown option\(s\) merge\.methd"), ({"method": "blend"}, "merge method"),
                       ({"fuse_iou": "high"}, r"merge\.fuse_iou must be a number"), ("fuse", "merge must be a mapping")):
        with pytest.raises(ValueError, match=match):
            make(toy_cache, merge=bad)


def test_double_q_takes_the_online_nets_pick_valued_by_the_target_net(toy_cache, tmp_path, capsys):
    """``double_q: true`` (Double DQN): the TD target is ``r + gamma * Q_target(s', argmax_a' Q(s', a'))``, not the
    target net's max; the option survives a save and load, trains with and without demonstrations, and a value that
    is not a boolean is refused before a run folder is made."""
    import torch
    from torch.nn import functional as F

    from zoomdet.agents.policy import algorithm_class
    from zoomdet.agents.train import TrainArgs, train_agent
    from zoomdet.cli import main

    kw = {"state": "entropy", "lam": 1.0, "window_features": True, "window_extras": ["density"]}
    for extra in ({}, {"demo_rule": "greedy-entropy", "demo_episodes": 20, "demo_pretrain_steps": 50}):
        hp = {"learning_starts": 50, "buffer_size": 500, "double_q": True, **extra}
        run = train_agent(TrainArgs(cache=str(toy_cache), n_timesteps=150, progress=False, env_kwargs=kw,
                                    hyperparams=hp, log_folder=str(tmp_path / "logs"), conf_file="configs/agents/dqn.yml"))
        model = algorithm_class("dqn").load(str(run / "ZoomDet-v0.zip"))
        assert model.double_q is True
    trained = algorithm_class("dqn").load(str(run / "ZoomDet-v0.zip"))
    env = make(toy_cache, **kw)
    from stable_baselines3.common.buffers import DictReplayBuffer

    buf = DictReplayBuffer(300, env.observation_space, env.action_space, device="cpu")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.choice(np.flatnonzero(obs["mask"])))
        nxt, r, term, trunc, _ = env.step(a)
        buf.add({k: v[None] for k, v in obs.items()}, {k: v[None] for k, v in nxt.items()}, np.array([a]),
                np.array([r]), np.array([term]), [{}])
        obs = env.reset()[0] if term or trunc else nxt
    with torch.no_grad():  # a target net unlike the online one, so the two targets differ
        for p in trained.q_net_target.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    data = buf.sample(128)
    with torch.no_grad():
        q_next, t_next = trained.q_net(data.next_observations), trained.q_net_target(data.next_observations)
        double = t_next.gather(1, q_next.argmax(dim=1, keepdim=True))
        plain = t_next.max(dim=1, keepdim=True).values
        q = trained.q_net(data.observations).gather(1, data.actions.long())
        expect = {flag: F.smooth_l1_loss(q, data.rewards + (1 - data.dones) * trained.gamma * nxt_q).item()
                  for flag, nxt_q in ((True, double), (False, plain))}
    assert (plain >= double).all() and (plain > double).any()  # the max over the target net is never below
    for flag in (True, False):
        trained.double_q = flag
        assert trained._td_loss(data).item() == pytest.approx(expect[flag], rel=1e-5)
    assert expect[True] != pytest.approx(expect[False])
    assert main(["train", "--cache", str(toy_cache), "-f", str(tmp_path / "bad"), "--no-progress", "-n", "10",
                 "--env-kwargs", "state:entropy", "--hyperparams", "double_q:2"]) == 2
    assert "double_q must be true or false" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("ZoomDet-v0_*"))
