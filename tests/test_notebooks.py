"""Both notebooks run headless, top to bottom, on a tiny evaluation and replay (nbclient)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from zoomdet.cli import main

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, synth_small, tiny_checkpoint):
    out = tmp_path_factory.mktemp("nb")
    common = ["--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--images", "2", "--no-progress"]
    assert main(["evaluate", "--policy", "coarse", "--policy", "fine", "--policy", "greedy-entropy", "--budget", "0.6",
                 "--out", str(out / "eval"), *common]) == 0
    assert main(["replay", "--policy", "greedy-entropy", "--budget", "0.8", "--lam", "1", "--out", str(out / "replay"),
                 *common]) == 0
    return out


def run_notebook(name: str, env: dict, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_replay_notebook_runs_on_a_recorded_episode(outputs, tmp_path):
    episode = sorted((outputs / "replay").glob("episode_*.json"))[0]
    nb = run_notebook("replay_episode.ipynb", {"ZOOMDET_EPISODE": str(episode)}, tmp_path)
    text = _text(nb)
    assert "policy greedy-entropy" in text and "| coarse |" in text
    assert _images(nb) >= 3  # AP curve, the step grid, the final result


def test_compare_notebook_runs_on_a_report(outputs, tmp_path):
    nb = run_notebook("compare_policies.ipynb", {"ZOOMDET_REPORTS": str(outputs / "eval" / "report.json")}, tmp_path)
    text = _text(nb)
    assert "greedy-entropy@0.6" in text and "| image | AP fine |" in text
    assert _images(nb) >= 2
