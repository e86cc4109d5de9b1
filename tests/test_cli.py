import json
import subprocess
import sys

import pytest

from zoomdet.cli import main


def test_doctor_passes_on_this_install(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.ops.nms and roi_align load and run" in out and "torch " in out


def test_data_synth_and_stats(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--images", "2", "--size", "320x240", "--seed", "1"]) == 0
    assert main(["data", "stats", str(tmp_path / "s" / "annotations.json")]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "<16" in out and "16-32" in out


def test_bad_cli_input_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path), "--size", "big"])
    assert "size must look like 2048x1536" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "missing.json")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    assert main(["detector", "train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("train:\n  lr_typo: 1\n")
    assert main(["detector", "train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "unknown option(s) train.lr_typo" in capsys.readouterr().err


def test_evaluate_writes_report_and_resumes(tmp_path, synth_small, tiny_checkpoint, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--policy", "coarse", "--policy", "fine", "--policy", "sahi", "--policy", "random", "--policy", "oracle",
            "--budget", "0.5", "0.8", "--images", "2", "--no-progress",
            "--set", "policies.sahi.slice_width=160", "--set", "policies.sahi.slice_height=160"]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    rows = {r["policy"]: r for r in rep["policies"]}
    assert set(rows) == {"coarse", "fine", "sahi", "random@0.5", "random@0.8", "oracle@0.5", "oracle@0.8"}
    assert rows["coarse"]["pixels_ratio"] == pytest.approx(0.25)
    assert rows["fine"]["pixels_ratio"] == pytest.approx(1.0) and rows["fine"]["rel_pixels"] == pytest.approx(1.0)
    assert rows["sahi"]["pixels_ratio"] > 1
    assert rows["random@0.5"]["pixels_ratio"] <= 0.5 + 1e-9
    for r in rows.values():
        for k in ("ap", "ap50", "ap_small", "ap_tiny", "ar100", "detector_calls_per_image", "time_per_image_s"):
            assert k in r
    assert (out / "pareto.png").stat().st_size > 1000 and "| policy |" in (out / "report.md").read_text()
    # rerun: everything is reused from partial.json and the metrics are identical
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming: 2/2" in capsys.readouterr().out
    rep2 = json.loads((out / "report.json").read_text())
    assert [r["ap"] for r in rep2["policies"]] == [r["ap"] for r in rep["policies"]]


def test_evaluate_rejects_unknown_policy(tmp_path, synth_small, tiny_checkpoint, capsys):
    code = main(["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path),
                 "--policy", "magic", "--no-progress"])
    assert code == 2 and "unknown policy 'magic'" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "zoomdet.cli", "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--budget" in r.stdout and "--policy" in r.stdout
