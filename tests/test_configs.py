"""Every shipped config loads into its typed object, and what it names exists."""

from pathlib import Path

import pytest

from zoomdet.config import load_config
from zoomdet.detector.models import build_model
from zoomdet.detector.train import DetectorTrainConfig
from zoomdet.eval.evaluator import EvalConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_configs_load_and_name_a_shipped_checkpoint(path):
    cfg = load_config(EvalConfig, path)
    assert 0 < cfg.zoom.coarse_scale < cfg.zoom.fine_scale
    if cfg.checkpoint is None:  # the embedded detector: the synthetic set's configs only
        assert path.name in ("synth.yaml", "synth_agent.yaml")
    else:
        assert (REPO / cfg.checkpoint).is_file(), f"{path.name}: checkpoint {cfg.checkpoint} is not in the repository"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "detector").glob("*.yaml")), ids=lambda p: p.name)
def test_detector_configs_load_and_build(path):
    cfg = load_config(DetectorTrainConfig, path)
    model = build_model(cfg.model)
    assert cfg.model.num_classes >= 2 and sum(p.numel() for p in model.parameters()) > 0


def test_exponent_floats_without_a_dot_are_numbers_everywhere_a_user_types_them(tmp_path):
    """PyYAML reads ``1e-4`` as a string; --set, a YAML file's float fields, train's --hyperparams/--env-kwargs
    and the agent hyperparameter file all take it as the number (the train --help example is learning_rate:1e-3)."""
    from zoomdet.agents.train import TrainArgs, load_hyperparams, parse_key_values
    from zoomdet.config import apply_overrides, parse_value

    assert parse_value("1e-4") == pytest.approx(1e-4) and parse_value("-2.5E+3") == -2500.0
    assert parse_value("5") == 5 and parse_value("[1, 2]") == [1, 2] and parse_value("runs/x1e-4.pt") == "runs/x1e-4.pt"
    assert parse_value("1e-4x") == "1e-4x" and parse_value("e5") == "e5"
    assert parse_key_values(["learning_rate:1e-3", "rnet:a.pt"]) == {"learning_rate": pytest.approx(1e-3), "rnet": "a.pt"}
    assert apply_overrides({}, ["train.lr=2e-3"]) == {"train": {"lr": pytest.approx(2e-3)}}
    # a float field of a typed config, from a file
    (tmp_path / "d.yaml").write_text("train:\n  lr: 3e-3\n")
    cfg = load_config(DetectorTrainConfig, tmp_path / "d.yaml")
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(3e-3)
    # the agents' hyperparameter file
    (tmp_path / "dqn.yml").write_text("ZoomDet-v0:\n  learning_rate: 1e-4\n  policy: ZoomDQNPolicy\n")
    hp = load_hyperparams(TrainArgs(conf_file=str(tmp_path / "dqn.yml")))
    assert hp["learning_rate"] == pytest.approx(1e-4) and hp["policy"] == "ZoomDQNPolicy"


def test_config_values_of_the_wrong_type_are_refused_with_their_field_named():
    """``--set seed=abc`` used to reach the evaluator and fail there with a TypeError."""
    from zoomdet.config import ConfigError, from_dict, type_problem

    assert type_problem(int, 3) is None and type_problem(int, True) == "an integer" and type_problem(int, 2.5)
    assert type_problem(float, 3) is None and type_problem(float, "x") == "a number"
    assert type_problem(bool, 1) == "true or false" and type_problem(str, 1) == "a string"
    from typing import Optional

    assert type_problem(Optional[str], None) is None and type_problem(Optional[float], "x") == "a number or null"
    assert type_problem(list[float], [1, 2.5]) is None and type_problem(list[bool], [1]) == "a list of booleans"
    assert type_problem(list[int], 3) == "a list" and type_problem(dict, []) == "a mapping"
    from collections.abc import Sequence

    assert type_problem(Sequence[int], (3, 4)) is None and type_problem(Sequence[int], ["a"]) == "a list of integers"
    for data, message in [({"seed": "abc"}, "seed must be an integer, got 'abc'"),
                          ({"zoom": {"coarse_scale": "half"}}, "zoom.coarse_scale must be a number"),
                          ({"zoom": {"windows": {"grids": ["a"]}}}, "zoom.windows.grids must be a list of integers"),
                          ({"detector_settings": 3}, "detector_settings must be a mapping"),
                          ({"checkpoint": 5}, "checkpoint must be a string or null")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(EvalConfig, data)
    for data, message in [({"batch_size": 0}, "batch_size and proposal_min must be >= 1"),
                          ({"images": -1}, "images >= 0"), ({"budgets": [0.5, -1]}, "budgets are pixel ratios > 0")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(EvalConfig, data)
    cfg = from_dict(EvalConfig, {"seed": 3, "proposal_density": 3500, "checkpoint": None})  # an int is a number
    assert cfg.seed == 3 and cfg.proposal_density == 3500
