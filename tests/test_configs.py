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
    if cfg.checkpoint is None:  # the embedded detector
        assert path.name == "synth.yaml"
    else:
        assert (REPO / cfg.checkpoint).is_file(), f"{path.name}: checkpoint {cfg.checkpoint} is not in the repository"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "detector").glob("*.yaml")), ids=lambda p: p.name)
def test_detector_configs_load_and_build(path):
    cfg = load_config(DetectorTrainConfig, path)
    model = build_model(cfg.model)
    assert cfg.model.num_classes >= 2 and sum(p.numel() for p in model.parameters()) > 0
