"""``zoomdet quickstart`` end to end on tiny settings, then a rerun that reuses every stage."""

import json

import torch
import yaml

from zoomdet.cli import main


def test_quickstart_runs_every_stage_and_resumes(tmp_path, tiny_checkpoint, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"checkpoint: {tiny_checkpoint}\nzoom:\n  windows:\n    refine_steps: 0  # no refinement positions: 14 cached windows per image\n"
                   "policies:\n  greedy_stop: 0.05\n  sahi:\n    slice_width: 160\n    slice_height: 160\n")
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--no-progress", "--set", "width=320", "--set", "height=240",
            "--set", "train_images=3", "--set", "tune_images=1", "--set", "val_images=2", "--set", "agent_steps=300",
            "--set", "workers=0", "--set", "replay_images=1", "--set", "budgets=[0.6]", "--set", f"eval_config={cfg}"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for stage in ("data", "rnet", "agent", "eval", "replay"):
        assert f"[quickstart] {stage}: running" in text
    report = json.loads((out / "eval" / "report.json").read_text())
    names = {r["name"] for r in report["policies"]}
    assert {"coarse", "fine", "sahi", "greedy", "greedy-entropy", "oracle", "oracle-ap"} <= names
    assert any(n.startswith("dqn:") for n in names)
    # the agent is the project's recipe: its run says so, with a budget range that holds the evaluated budget
    run = next((out / "logs" / "dqn").glob("ZoomDet-v0_*"))
    env = json.loads((run / "zoomdet.json").read_text())["env_config"]
    assert env["reward"] == "ap" and env["window_features"] and env["budget_range"][0] < 0.6 < env["budget_range"][1]
    assert (run / "demonstrations.json").is_file()
    # its demonstrator stops as the eval config's rules do
    hp = yaml.safe_load((run / "config.yml").read_text())["ZoomDet-v0"]
    assert hp["demo_stop_gain"] == 0.05 and hp["demo_rule"] == "greedy-entropy"
    assert report["images"] == 2 and (out / "eval" / "pareto.png").is_file()
    # the report names the CPU kernels torch chose: they round differently, and the numbers follow
    assert f"({torch.backends.cpu.get_cpu_capability()} kernels)" in report["hardware"]
    assert len(list((out / "replay").glob("episode_*.json"))) == 1 and list((out / "replay").glob("*.gif"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agent"].endswith(".zip") and (out / "quickstart.yaml").is_file()
    # rerun: every stage is reused, nothing is recomputed
    assert main(args) == 0
    text = capsys.readouterr().out
    for stage in ("data", "rnet", "agent", "eval", "replay"):
        assert f"[quickstart] {stage}: reused" in text
    assert main(["quickstart", "--out", str(out), "--set", "train_imgs=3"]) == 2
    assert "unknown option" in capsys.readouterr().err
    for item, said in [("train_images=0", "train_images must be >= 2"), ("width=5", "width and height must be"),
                       ("agent_steps=-5", "agent_steps must be >= 1"), ("workers=-1", "workers must be >= 0"),
                       ("agent_recipe=magic", "agent_recipe must be one of dqfd, paper"),
                       ("budgets=[]", "budgets > 0 (at least one)")]:
        fresh = tmp_path / f"bad-{item.split('=')[0]}"
        assert main(["quickstart", "--out", str(fresh), "--set", item]) == 2
        assert said in capsys.readouterr().err and not fresh.exists()  # refused before any stage ran
