"""``zoomdet export`` and the agent shipped in ``zoomdet/assets/agents/hituav_gpu``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_env import make, toy_agent, toy_cache  # noqa: F401  (toy_cache is a fixture)
from zoomdet.agents.export import EXPORTED_RNET, export_agent
from zoomdet.agents.policy import RUN_FILE, AgentPolicy, load_run_info
from zoomdet.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "zoomdet" / "assets" / "agents" / "hituav_gpu"


@pytest.fixture(scope="module")
def toy_runs(toy_cache, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """Two toy agents of one recipe (seeds 0 and 1) and one of another (``lam: 2``), trained once: their ``.zip``."""
    root = tmp_path_factory.mktemp("runs")
    return {"s0": toy_agent(toy_cache, root / "s0", 0), "s1": toy_agent(toy_cache, root / "s1", 1),
            "lam2": toy_agent(toy_cache, root / "lam2", 2, lam=2.0)}


def _run_copy(model: str, folder: Path) -> str:
    """A copy of a toy run's folder under ``folder``: its ``.zip`` there."""
    shutil.copytree(Path(model).parent, folder)
    return str(folder / Path(model).name)


def _with_return(model: str, returns: list[float], eval_cache: str = "runs/val-cache") -> str:
    """Give a toy run the ``evaluations.npz`` (mean returns per evaluation, 3 episodes each) and the eval cache
    in ``args.yml`` that a run trained with ``--eval-cache`` has."""
    run = Path(model).parent
    np.savez(run / "evaluations.npz", timesteps=np.arange(1, len(returns) + 1) * 100,
             results=np.repeat(np.array(returns)[:, None], 3, axis=1), ep_lengths=np.ones((len(returns), 3)))
    args = (run / "args.yml").read_text().replace("eval_cache: null", f"eval_cache: {eval_cache}")
    (run / "args.yml").write_text(args)
    return model


def test_export_keeps_the_best_eval_return_and_loads_from_any_folder(toy_cache, toy_runs, tmp_path, monkeypatch,  # noqa: F811
                                                                    capsys):
    runs = [_run_copy(toy_runs["s0"], tmp_path / "a"), _run_copy(toy_runs["s1"], tmp_path / "b"),
            _run_copy(toy_runs["s0"], tmp_path / "c")]
    for model, returns in zip(runs, ([0.5, 1.0], [0.9, 1.4, 1.2], [1.3, 0.2])):
        _with_return(model, returns)
    out = tmp_path / "shipped"
    assert cli(["export", *runs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "* " + runs[1] in printed and "eval-cache return 1.400 at step 200" in printed
    info = json.loads((out / RUN_FILE).read_text())
    assert info["exported"]["model"] == runs[1] and info["exported"]["picked_by"] == "the best eval-cache return"
    assert [c["eval_return"] for c in info["exported"]["candidates"]] == pytest.approx([1.0, 1.4, 1.3])
    assert (out / "best_model.zip").read_bytes() == Path(runs[1]).read_bytes() != Path(runs[0]).read_bytes()
    assert not (out / EXPORTED_RNET).exists()  # an entropy-state agent has no R-net to carry

    # the folder works from elsewhere, and plays as the run it came from
    moved = tmp_path / "elsewhere" / "agent"
    shutil.copytree(out, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    exported, original = AgentPolicy.from_path("agent/best_model.zip"), AgentPolicy.from_path(runs[1])
    env = make(toy_cache, **load_run_info(runs[1])["env_config"]).unwrapped
    for index in range(len(env.records)):
        obs, _ = env.reset(options={"index": index})
        assert exported.act(obs) == original.act(obs)


def test_export_refuses_what_it_cannot_compare_or_would_overwrite(toy_runs, tmp_path):
    a = _with_return(_run_copy(toy_runs["s0"], tmp_path / "a"), [1.0])
    b = _with_return(_run_copy(toy_runs["s1"], tmp_path / "b"), [2.0], eval_cache="runs/other-val")
    with pytest.raises(ValueError, match="not comparable"):
        export_agent([a, b], tmp_path / "out")
    c = _with_return(_run_copy(toy_runs["lam2"], tmp_path / "c"), [1.0])
    with pytest.raises(ValueError, match="differs .* in env_config"):
        export_agent([a, c], tmp_path / "out")
    d = _run_copy(toy_runs["s1"], tmp_path / "d")  # trained without an eval cache
    with pytest.raises(ValueError, match="no evaluations.npz"):
        export_agent([a, d], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        export_agent([a, str(tmp_path / "none.zip")], tmp_path / "out")
    with pytest.raises(ValueError, match="at least one"):
        export_agent([], tmp_path / "out")
    with pytest.raises(ValueError, match="one of the runs"):
        export_agent([a], Path(a).parent)
    broken = _run_copy(toy_runs["s0"], tmp_path / "broken")
    Path(broken).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a dqn model that loads"):
        export_agent([broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written by a refused export

    export_agent([d], tmp_path / "out")  # one run needs no eval return
    with pytest.raises(FileExistsError, match="--force"):
        export_agent([a], tmp_path / "out")
    assert (tmp_path / "out" / "best_model.zip").read_bytes() == Path(d).read_bytes() != Path(a).read_bytes()
    assert cli(["export", a, "--out", str(tmp_path / "out")]) == 2
    export_agent([a], tmp_path / "out", force=True)
    assert (tmp_path / "out" / "best_model.zip").read_bytes() == Path(a).read_bytes()


def test_the_shipped_hituav_agent_loads_with_its_detector_and_zooms_within_budget(tmp_path, monkeypatch):
    """The agent in ``zoomdet/assets/agents/hituav_gpu``: the best of the nine seeds on their eval cache, its
    R-net beside it, for the GPU-trained HIT-UAV detector under ``configs/eval/hituav_gpu_agent.yaml``."""
    from zoomdet.config import load_config
    from zoomdet.eval.evaluator import EvalConfig, load_detector
    from zoomdet.rnet.model import RNetGain
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import make_policy

    info = json.loads((SHIPPED / RUN_FILE).read_text())
    ex = info["exported"]
    assert info["relative_paths"] and info["env_config"]["rnet"] == EXPORTED_RNET
    best = max(ex["candidates"], key=lambda c: c["eval_return"])
    assert len(ex["candidates"]) == 9 and ex["model"] == best["model"]

    cfg = load_config(EvalConfig, str(REPO / "configs" / "eval" / "hituav_gpu_agent.yaml"))
    cfg.checkpoint = str(REPO / cfg.checkpoint)
    detector = load_detector(cfg)
    assert detector.detector_id == info["detector_id"]
    monkeypatch.chdir(tmp_path)  # the R-net is read from the agent's folder, not the working directory
    agent = make_policy(str(SHIPPED / "best_model.zip"), cfg.policies, cfg.zoom, detector.detector_id)
    assert isinstance(agent, AgentPolicy) and isinstance(agent.gain_model, RNetGain)
    assert agent.gain_model.detector_id == detector.detector_id
    with pytest.raises(ValueError, match="was trained on a cache of detector"):
        make_policy(str(SHIPPED / "best_model.zip"), cfg.policies, cfg.zoom, "another-detector")

    torch.manual_seed(0)
    image = torch.rand(3, 512, 640)
    engine = ZoomEngine(detector, cfg.zoom)
    for budget in (0.35, 0.6):
        res = engine.run(image, agent, max_pixels_ratio=budget)
        assert res.cost.pixels_ratio <= budget + 1e-9
        assert len(res.regions) <= (1 if budget == 0.35 else 13)

    # exporting the shipped folder again gives the same folder (its R-net found beside it)
    again = export_agent([SHIPPED / "best_model.zip"], tmp_path / "again")
    assert (tmp_path / "again" / EXPORTED_RNET).read_bytes() == (SHIPPED / EXPORTED_RNET).read_bytes()
    assert (tmp_path / "again" / "best_model.zip").read_bytes() == (SHIPPED / "best_model.zip").read_bytes()
    assert again["detector_id"] == info["detector_id"] and again["env_config"] == info["env_config"]
    assert again["exported"]["earlier"] == ex  # the first export's record is kept
