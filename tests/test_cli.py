import json
import subprocess
import sys

import pytest

from zoomdet.cli import main


def test_doctor_passes_on_this_install(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torchvision.ops.nms and roi_align load and run" in out and "torch " in out
    import torch  # the kernels torch chose round floating point their own way: the README's tables name them
    assert f"cpu kernels: {torch.backends.cpu.get_cpu_capability()}" in out


def test_doctor_compares_the_installed_versions_with_the_pins(tmp_path, capsys):
    from importlib.metadata import version

    from zoomdet.doctor import CONSTRAINTS, pinned_versions, run_doctor, version_mismatches

    pins = tmp_path / "constraints.txt"
    torch_version = version("torch")
    pins.write_text(f"# header\n\nTorch=={torch_version}  # the installed one\n-e /somewhere\n"
                    "numpy==0.0.1\nnot-a-package-zoomdet==1.0\n")
    assert pinned_versions(pins) == {"torch": torch_version, "numpy": "0.0.1", "not-a-package-zoomdet": "1.0"}
    assert version_mismatches(pinned_versions(pins)) == [("numpy", "0.0.1", version("numpy")),
                                                         ("not-a-package-zoomdet", "1.0", None)]
    assert run_doctor(constraints=pins) == 0  # a warning: the install still runs
    captured = capsys.readouterr()
    assert "WARNING: 2 installed versions differ" in captured.err and "not-a-package-zoomdet missing (pinned 1.0)" in captured.err
    pins.write_text("torch>=2\n")
    with pytest.raises(ValueError, match="expected name==version"):
        pinned_versions(pins)
    # `make venv` installs with the repository's pins, so the suite runs in the environment the README measured
    assert CONSTRAINTS.is_file() and "torch" in pinned_versions(CONSTRAINTS)
    assert version_mismatches(pinned_versions(CONSTRAINTS)) == [], "the venv is not the pinned one: run `make clean venv`"


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
    # a value a section refuses is named by its section
    assert main(["evaluate", "--config", "configs/eval/synth.yaml", "--data", str(tmp_path / "none.json"), "--policy",
                 "coarse", "--out", str(tmp_path / "o"), "--set", "zoom.coarse_scale=7"]) == 2
    assert "zoomdet evaluate: error: zoom: scales must be in (0, 1]" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")  # a file where the output folder should be
    assert main(["data", "synth", "--out", str(tmp_path / "afile"), "--images", "1", "--size", "64x64"]) == 2
    assert "zoomdet data: error: [Errno 20] Not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a negative sample size is refused by the parser
        main(["evaluate", "--config", "configs/eval/synth.yaml", "--data", "x.json", "--policy", "coarse", "--out",
              str(tmp_path / "o"), "--images", "-3"])
    assert "argument --images: must be >= 0, got -3" in capsys.readouterr().err
    for argv, said in [(["cache", "build", "--data", "x.json", "--out", "c", "--workers", "-1"], "--workers: must be >= 0"),
                       (["serve", "--num-cpus", "0"], "--num-cpus: must be >= 1"),
                       (["train", "--cache", "c", "--eval-episodes", "-2"], "--eval-episodes: must be >= 0"),
                       (["replay", "--policy", "greedy", "--data", "x.json", "--out", "r", "--lam", "-3"],
                        "--lam: must be >= 0")]:
        with pytest.raises(SystemExit):  # refused by the parser, before Ray or a model starts
            main(argv)
        assert said in capsys.readouterr().err
    # the detector's training options are checked before any data is read
    for item, message in [("train.batch_size=0", "batch_size must be >= 1, got 0"),
                          ("train.images=-4", "images must be >= 0, got -4"),
                          ("train.scales=[]", "scales must be a non-empty list"),
                          ("train.val_scales=[0.5, 9]", "val_scales must be a non-empty list"),
                          ("train.object_centred=2", "object_centred is a fraction"),
                          ("train.lr=-1", "lr must be > 0")]:
        assert main(["detector", "train", "--set", item, "--set", f"train.data={tmp_path / 'none.json'}"]) == 2
        assert f"zoomdet detector: error: train: {message}" in capsys.readouterr().err


def test_evaluate_writes_report_and_resumes(tmp_path, synth_small, tiny_checkpoint, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--policy", "coarse", "--policy", "fine", "--policy", "sahi", "--policy", "random", "--policy", "oracle",
            "--budget", "0.5", "0.8", "--images", "3", "--no-progress",
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
        for k in ("ap", "ap50", "ap75", "ap_small", "ap_tiny", "ar100", "detector_calls_per_image", "time_per_image_s"):
            assert k in r
    from zoomdet.eval.evaluator import report_markdown
    from zoomdet.eval.results import rows_from_report

    bench_rows = {r["policy"] + (f"@{r['budget']:g}" if r["budget"] else ""): r for r in rows_from_report(rep, "toy")}
    assert {k: (r["ap50"], r["ap75"]) for k, r in bench_rows.items()} == {
        k: (r["ap50"], r["ap75"]) for k, r in rows.items()}  # the benchmarks' rows carry both thresholds
    assert (out / "pareto.png").stat().st_size > 1000 and "| policy |" in (out / "report.md").read_text()
    # every run's detections as a COCO results file that pycocotools re-scores to the report's AP
    from pycocotools.coco import COCO

    from zoomdet.eval.coco_eval import coco_metrics

    gt = COCO(str(synth_small))
    for key in ("fine", "oracle@0.5"):
        res = json.loads((out / rows[key]["detections_file"]).read_text())
        assert res and set(res[0]) >= {"image_id", "category_id", "bbox", "score"}
        assert coco_metrics(gt, res, rep["image_ids"])["ap"] == pytest.approx(rows[key]["ap"])
    assert rows["oracle@0.5"]["detections_file"] == "detections/oracle@0.5.json"
    # per-class AP, one entry per category of the data, and its table in report.md
    assert set(rows["fine"]["per_class"]) == set(gt.cats[c]["name"] for c in gt.getCatIds())
    assert "Per-class AP" in (out / "report.md").read_text()
    # rerun: everything is reused from partial.json and the metrics are identical
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming: 3/3" in capsys.readouterr().out
    rep2 = json.loads((out / "report.json").read_text())
    assert [r["ap"] for r in rep2["policies"]] == [r["ap"] for r in rep["policies"]]
    # a policy and a budget added: only the new runs are computed; the earlier runs' figures are reused as they were
    capsys.readouterr()
    more = [a for a in args if a != "0.8"] + ["--policy", "greedy-entropy"]
    more.insert(more.index("0.5") + 1, "0.8")
    more.insert(more.index("0.8") + 1, "0.6")
    assert main(more) == 0
    said = capsys.readouterr().out
    assert "resuming: 0/3" in said and "new runs: random@0.6, oracle@0.6, greedy-entropy@0.5" in said
    rows3 = {r["policy"]: r for r in json.loads((out / "report.json").read_text())["policies"]}
    for key, r in rows.items():
        assert rows3[key]["ap"] == r["ap"] and rows3[key]["time_per_image_s"] == r["time_per_image_s"]
        assert rows3[key]["rel_time"] == pytest.approx(r["rel_time"]) and rows3[key]["timed_by"] == r["timed_by"]
    assert {"random@0.6", "greedy-entropy@0.8"} <= set(rows3)
    # the runs added were timed by another evaluation than fine's: their time is their own, not relative to fine's
    assert all(r["rel_time"] is not None and len(r["timed_by"]) == 1 for r in rows.values())
    for key in set(rows3) - set(rows):
        assert rows3[key]["rel_time"] is None and rows3[key]["time_per_image_s"] > 0
        assert rows3[key]["timed_by"] != rows["fine"]["timed_by"]
    assert "rel time –: the run was not timed by the same evaluations as `fine`" in (out / "report.md").read_text()
    assert "rel time –" not in report_markdown(rep)
    state = json.loads((out / "partial.json").read_text())
    assert all(sorted(state["runs"][k]["done"]) == sorted(rep["image_ids"]) for k in rows3)


def test_evaluate_restarts_when_the_same_weights_run_with_other_detector_settings(tmp_path, synth_small, tiny_checkpoint,
                                                                                  capsys):
    """A checkpoint's digest names its weights, not how the code builds the model around them (e.g. RPN counts
    that a newer version defaults differently): the resume signature covers both."""
    from dataclasses import replace

    from zoomdet.detector.detector import Detector, load_checkpoint
    from zoomdet.detector.models import build_model
    from zoomdet.eval.evaluator import EvalConfig, evaluate

    cfg, out = EvalConfig(images=2), tmp_path / "ev"
    det = Detector.from_checkpoint(tiny_checkpoint)
    first = evaluate(cfg, str(synth_small), ["coarse"], out, progress=False, detector=det)
    capsys.readouterr()
    evaluate(cfg, str(synth_small), ["coarse"], out, progress=False, detector=det)
    assert "resuming: 2/2" in capsys.readouterr().out
    model, model_cfg, cats, _ = load_checkpoint(tiny_checkpoint)
    other_cfg = replace(model_cfg, rpn_post_nms_top_n=7)
    other = build_model(other_cfg)
    other.load_state_dict(model.state_dict())
    again = evaluate(cfg, str(synth_small), ["coarse"], out, progress=False,
                     detector=Detector(other, other_cfg, cats, checkpoint_id=det.checkpoint_id))
    assert "resuming" not in capsys.readouterr().out
    assert again["checkpoint"] == first["checkpoint"]  # same weights, same digest: only the settings told them apart


def test_evaluate_rejects_unknown_policy(tmp_path, synth_small, tiny_checkpoint, capsys):
    code = main(["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path),
                 "--policy", "magic", "--no-progress"])
    assert code == 2 and "unknown policy 'magic'" in capsys.readouterr().err
    code = main(["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out",
                 str(tmp_path / "miss"), "--policy", "greedy-entropy+miss", "--no-progress"])
    assert code == 2 and "needs a miss map: set policies.miss_map" in capsys.readouterr().err
    assert not (tmp_path / "miss").exists()


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "zoomdet.cli", "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--budget" in r.stdout and "--policy" in r.stdout


def test_replay_records_episodes_and_renders(tmp_path, synth_small, tiny_checkpoint, capsys):
    from zoomdet.zoom.episode import load_episode

    out = tmp_path / "rp"
    assert main(["replay", "--policy", "greedy-entropy", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint),
                 "--out", str(out), "--images", "1", "--budget", "0.8", "--lam", "1", "--render", "--no-progress"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert len(index["episodes"]) == 1
    doc = load_episode(out / index["episodes"][0]["file"])
    assert doc["policy"] == "greedy-entropy" and doc["config"]["max_pixels_ratio"] == 0.8
    assert doc["cost"]["pixels_ratio"] <= 0.8 + 1e-9 and "ground_truth" in doc
    assert all(s["reward"] is not None for s in doc["steps"])
    stem = f"episode_{doc['image']['id']}"
    assert (out / f"{stem}.gif").is_file() and (out / f"{stem}_step0.png").is_file()


def test_serve_and_query_bad_input_give_clear_errors(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "serve config not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("applications:\n  - name: x\n    import_path_typo: a.b\n")
    assert main(["serve", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "not a valid Ray Serve config" in capsys.readouterr().err
    (tmp_path / "text.yaml").write_text("just a line of text\n")  # YAML, but not a mapping; then not YAML
    assert main(["serve", "--config", str(tmp_path / "text.yaml")]) == 2
    assert "a Serve config is a mapping" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("applications: [1\n")
    assert main(["serve", "--config", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["serve", "--config", "serving/config.yaml", "--port", "70000"]) == 2
    assert "port must be" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "missing.jpg")]) == 2
    assert "image not found" in capsys.readouterr().err
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["query", str(tmp_path / "a.png"), "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemExit) as e:
            main(["query", str(tmp_path / "a.png"), "--max-latency-ms", bad])
        assert e.value.code == 2
    assert "--max-latency-ms" in capsys.readouterr().err


def test_evaluate_refuses_two_policies_with_one_name(tmp_path, synth_small, tiny_checkpoint, monkeypatch):
    """Two agents whose run folders share a name (logs/dqn/ZoomDet-v0_1 of two runs) would share a row."""
    import zoomdet.eval.evaluator as ev
    from zoomdet.zoom.policies import make_policy

    def named_alike(name, *a, **kw):
        pol = make_policy("coarse" if name.endswith(".zip") else name, *a, **kw)
        if name.endswith(".zip"):
            pol.name = "dqn:ZoomDet-v0_1/best_model"
        return pol

    monkeypatch.setattr(ev, "make_policy", named_alike)
    cfg = ev.EvalConfig(checkpoint=str(tiny_checkpoint), images=1)
    with pytest.raises(ValueError, match="both named 'dqn:ZoomDet-v0_1/best_model'"):
        ev.evaluate(cfg, str(synth_small), ["a/ZoomDet-v0_1/best_model.zip", "b/ZoomDet-v0_1/best_model.zip"],
                    tmp_path / "out", progress=False)


def test_evaluate_under_a_deadline_reports_the_windows_it_left_out(tmp_path, synth_small, tiny_checkpoint, capsys):
    base = ["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--policy", "coarse",
            "--policy", "random", "--policy", "greedy-entropy", "--budget", "0.8", "--images", "2", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "free")]) == 0
    free = {r["policy"]: r for r in json.loads((tmp_path / "free" / "report.json").read_text())["policies"]}
    assert free["random@0.8"]["windows_per_image"] > 0 and free["random@0.8"]["windows_dropped_per_image"] == 0
    # a deadline no pass meets: every zoom run is its coarse pass, and the report says how many windows it left out
    assert main(base + ["--out", str(tmp_path / "late"), "--set", "max_latency_ms=0.001"]) == 0
    late = json.loads((tmp_path / "late" / "report.json").read_text())
    rows = {r["policy"]: r for r in late["policies"]}
    for key in ("random@0.8", "greedy-entropy@0.8"):
        assert rows[key]["windows_per_image"] == 0 and rows[key]["pixels_ratio"] == pytest.approx(0.25)
        assert rows[key]["windows_dropped_per_image"] == free[key]["windows_per_image"]
        assert rows[key]["late_share"] == 1.0 and free[key]["late_share"] is None  # 0.001 ms: every answer late
        assert rows[key]["late_ms_mean"] == pytest.approx(1000 * rows[key]["time_per_image_s"] - 0.001, rel=1e-6)
    assert rows["coarse"]["pixels_ratio"] == pytest.approx(0.25) and late["config"]["max_latency_ms"] == 0.001
    assert "Deadline: 0.001 ms per image" in (tmp_path / "late" / "report.md").read_text()
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "bad"), "--set", "max_latency_ms=0"]) == 2
    assert "max_latency_ms must be > 0" in capsys.readouterr().err


def test_evaluate_refuses_an_unknown_image_dtype(tmp_path, synth_small, tiny_checkpoint, capsys):
    code = main(["evaluate", "--data", str(synth_small), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path),
                 "--policy", "coarse", "--set", "image_dtype=float16", "--no-progress"])
    assert code == 2 and "image_dtype must be uint8 or float32" in capsys.readouterr().err


def test_detector_eval_runs_a_checkpoint_with_other_inference_settings_and_refuses_the_rest(tmp_path, synth_small,
                                                                                            tiny_checkpoint, capsys):
    out = tmp_path / "eval.json"
    base = ["detector", "eval", "--checkpoint", str(tiny_checkpoint), "--data", str(synth_small), "--images", "2",
            "--scales", "0.5"]
    assert main(base + ["--set", "rpn_pre_nms_top_n=2000", "--set", "rpn_score_thresh=0", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["settings"] == {"rpn_pre_nms_top_n": 2000, "rpn_score_thresh": 0} and rep["images"] == 2
    printed = capsys.readouterr()
    assert json.loads(printed.out) == rep and "scale 0.5: AP" in printed.err  # stdout is the report alone
    for bad, said in [("fpn_channels=8", "not an inference setting"), ("rpn_score_thresh=1.5", "rpn_score_thresh"),
                      ("rpn_pre_nms_top_n", "FIELD=NUMBER"), ("rpn_pre_nms_top_n=many", "FIELD=NUMBER"),
                      ("score_thresh=true", "FIELD=NUMBER")]:
        assert main(base + ["--set", bad]) == 2
        assert said in capsys.readouterr().err


def test_eval_config_detector_settings_reach_the_detector_and_unknown_fields_are_refused(tmp_path, tiny_checkpoint):
    from zoomdet.config import ConfigError, load_config
    from zoomdet.eval.evaluator import EvalConfig, load_detector

    cfg = load_config(EvalConfig, None, [f"checkpoint={tiny_checkpoint}", "detector_settings.box_head_rank=8",
                                         "detector_settings.roi_sampling_ratio=1"])
    det = load_detector(cfg)
    assert det.config.box_head_rank == 8 and det.config.roi_sampling_ratio == 1
    assert len(det.model.roi_heads.box_head.fc6) == 2  # the factorised layer
    assert det.detector_id != load_detector(EvalConfig(checkpoint=str(tiny_checkpoint))).detector_id
    with pytest.raises(ConfigError, match="num_classes not an inference setting"):
        load_config(EvalConfig, None, ["detector_settings.num_classes=3"])
    code = main(["evaluate", "--data", "x.json", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path),
                 "--policy", "coarse", "--set", "detector_settings.widths=[1,2]"])
    assert code == 2


def test_every_example_in_the_help_parses():
    """The examples under ``zoomdet --help`` are commands the parser accepts, one per line or continued by a
    backslash (a stray line continuation in the source would run two examples together)."""
    import shlex

    from zoomdet.cli import EPILOG, build_parser

    lines = EPILOG.splitlines()[1:]
    commands, current = [], ""
    for line in lines:
        current += " " + line.split("#", 1)[0].strip()
        if current.rstrip().endswith("\\"):
            current = current.rstrip()[:-1]
            continue
        commands.append(current.strip())
        current = ""
    assert len(commands) >= 15 and all(c.startswith("zoomdet ") for c in commands)
    assert all(c.count("zoomdet ") == 1 for c in commands)
    parser = build_parser()
    for c in commands:
        args = parser.parse_args(shlex.split(c)[1:])
        assert args.command == shlex.split(c)[1]


def test_help_pages_keep_to_a_terminal_width(monkeypatch):
    """Every help page, subcommands' too, fits 130 columns: the raw-formatted description and examples are not
    wrapped by argparse, so a lost line break shows as one long line."""
    import argparse

    from zoomdet.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    pages, todo = {}, [("zoomdet", build_parser())]
    while todo:
        name, parser = todo.pop()
        pages[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]
    assert {"zoomdet", "zoomdet train", "zoomdet cache build", "zoomdet serve"} <= set(pages)
    too_long = [(name, line) for name, page in pages.items() for line in page.splitlines() if len(line) > 130]
    assert not too_long


def test_every_zoomdet_command_in_the_docs_code_blocks_parses():
    """The commands a reader copies from README.md and the pages of docs/ (```bash blocks, continuation lines
    joined, comments dropped) are accepted by the CLI's parser: a renamed or removed flag fails here, not for the
    reader."""
    import re
    import shlex
    from pathlib import Path

    from zoomdet.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    commands = []
    docs = ["README.md", *sorted(str(p.relative_to(root)) for p in (root / "docs").glob("*.md"))]
    assert len(docs) >= 3
    for doc in docs:
        for block in re.findall(r"```bash\n(.*?)```", (root / doc).read_text(), re.S):
            current = ""
            for line in block.splitlines():
                line = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0].rstrip()
                current += " " + line.strip()
                if current.endswith("\\"):
                    current = current[:-1]
                    continue
                if current.strip().startswith("zoomdet "):
                    commands.append((doc, current.strip().removesuffix("&").strip()))
                current = ""
    assert len(commands) >= 20
    parser = build_parser()
    for doc, command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: `{command}` does not parse")


def test_train_help_gives_the_recipe_as_zoomdet_agents_train_defines_it():
    """``zoomdet train --help`` shows the recommended agent's command; it is written out (importing the agents
    would slow every ``--help``), so this checks it against :data:`RECIPE` and :data:`RECIPE_SCHEDULE`."""
    import shlex

    from zoomdet.agents.train import RECIPE, RECIPE_SCHEDULE
    from zoomdet.cli import TRAIN_EPILOG, build_parser
    from zoomdet.eval.results import split_variant

    first = TRAIN_EPILOG.split("zoomdet train ")[1].split("\n  #")[0].replace("\\\n", " ")
    args = build_parser().parse_args(["train", *shlex.split(first)])
    env_items, hp_items = split_variant(RECIPE)
    assert sorted(args.env_kwargs) == sorted(["rnet:RNET.pt", *env_items])
    assert sorted(args.hyperparams) == sorted([*hp_items, *RECIPE_SCHEDULE])


def test_every_link_of_the_docs_names_a_heading_of_the_page_it_points_at():
    """``[text](#anchor)`` and ``[text](page.md#anchor)`` in README.md, benchmarks/README.md and the pages of docs/
    point at a heading of that page, by GitHub's rule (lower case, punctuation dropped, spaces to hyphens, ``-1``
    for a repeated title); a renamed or moved section fails here, not for the reader. Links to other files must
    name files that exist."""
    import functools
    import re
    from pathlib import Path

    @functools.cache
    def anchors(page: Path) -> set[str]:  # each page's headings, read once however many links point at it
        seen, out, in_block = {}, set(), False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_block = not in_block
            elif not in_block and (m := re.match(r"#{1,6} (.+)", line)):
                slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
                seen[slug] = seen.get(slug, 0) + 1
        return out

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md"))]
    checked = 0
    for doc in docs:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            page = doc.parent.joinpath(path).resolve() if path else doc.resolve()
            assert page.exists(), f"{doc.relative_to(root)}: {target} not found"
            if anchor:
                assert anchor in anchors(page), f"{doc.relative_to(root)}: no heading for the link {target}"
            checked += 1
    assert checked >= 20


def test_the_margins_page_is_the_tables_output_of_the_committed_results(capsys, tmp_path):
    """docs/agent_margins.md holds, for each ``--margins PREFIX`` its code block names, exactly what
    ``benchmarks/tables.py`` prints from benchmarks/results/ap_compare.json; a results row rewritten without the page
    fails here. The mode itself: means of several seeds only, greedy's margin in parentheses, a prefix with no
    agent row refused, and --dataset still required without --margins."""
    import re
    from pathlib import Path

    from conftest import load_benchmark

    tables = load_benchmark("tables")
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "agent_margins.md").read_text()
    results = root / "benchmarks" / "results" / "ap_compare.json"
    prefixes = re.findall(r"--margins (\S+)", page)
    assert len(prefixes) >= 3
    for prefix in prefixes:
        assert tables.main([str(results), "--margins", prefix]) == 0
        assert capsys.readouterr().out.strip() in page, f"docs/agent_margins.md: the {prefix} table is stale"

    row = dict(images=10, baseline="greedy-entropy", ci_low=-1.0, ci_high=1.0)
    rows = [dict(row, dataset="d-a", policy="greedy", budget=0.5, seeds=1, diff=-0.5),
            dict(row, dataset="d-a", policy="agent-s0", budget=0.5, seeds=1, diff=0.9),
            dict(row, dataset="d-a", policy="agent (mean of 3 seeds)", budget=0.5, seeds=3, diff=0.25),
            dict(row, dataset="e-a", policy="agent (mean of 3 seeds)", budget=0.5, seeds=3, diff=2.0)]
    path = tmp_path / "ap_compare.json"
    path.write_text(json.dumps(rows))
    assert tables.main([str(path), "--margins", "d-"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| d-a")]
    assert lines == ["| d-a | agent | 3 | +0.25 [-1.00, +1.00] (+0.75) |"]
    assert tables.main([str(path), "--margins", "x-"]) == 1
    assert "no agent rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main([str(path)])
    assert "--dataset is required" in capsys.readouterr().err


def test_detect_answers_each_image_as_the_engine_does_keeps_going_past_a_bad_file_and_resumes(
        tmp_path, synth_small, tiny_checkpoint, capsys):
    import shutil

    from zoomdet.config import load_config
    from zoomdet.data.coco import read_image
    from zoomdet.eval.detect import read_answers
    from zoomdet.eval.evaluator import EvalConfig, load_detector
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.episode import answer_record
    from zoomdet.zoom.policies import make_policy

    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted((synth_small.parent / "images").iterdir())[:2]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.png").write_text("not an image")
    (folder / "notes.txt").write_text("not taken: not an image suffix")
    out = tmp_path / "det"
    argv = ["detect", str(folder), "--checkpoint", str(tiny_checkpoint), "--budget", "0.6", "--out", str(out),
            "--no-progress", "--render"]
    assert main(argv) == 1  # a file had no answer; the others did
    captured = capsys.readouterr()
    assert "2 of 3 images answered" in captured.out and "no answer for" in captured.err and "broken.png" in captured.err
    header, lines = read_answers(out / "detections.jsonl")
    assert header["policy"] == "greedy-entropy" and header["max_pixels_ratio"] == 0.6
    answers = {a["file"]: a for a in lines if "error" not in a}
    errors = [a for a in lines if "error" in a]
    assert len(answers) == 2 and len(errors) == 1 and errors[0]["file"].endswith("broken.png")
    assert sum(len(a["detections"]) for a in answers.values()) > 0 and any(a["regions"] for a in answers.values())

    # each answer is the engine's own on that image, in the service's format
    cfg = load_config(EvalConfig, None, [f"checkpoint={tiny_checkpoint}"])
    detector = load_detector(cfg)
    engine, policy = ZoomEngine(detector, cfg.zoom), make_policy("greedy-entropy", cfg.policies, cfg.zoom)
    for f, a in answers.items():
        res = engine.run(read_image(f, keep_uint8=True), policy, max_pixels_ratio=0.6)
        want = answer_record(res, detector.categories, policy="greedy-entropy", max_pixels_ratio=0.6, score_threshold=0.05)
        assert a["detections"] == want["detections"] and a["regions"] == want["regions"] and a["cost"] == want["cost"]
        assert a["cost"]["pixels_ratio"] <= 0.6 + 1e-9 and not a["budget_exceeded"]
        assert all(d["score"] >= 0.05 for d in a["detections"])
        assert (out / a["rendered"]).is_file()

    # the bad file removed, the same command keeps the answers it has (same timings: not rerun) and succeeds
    (folder / "broken.png").unlink()
    assert main(argv) == 0
    assert "resuming: 2/2 images already answered" in capsys.readouterr().out
    _, again = read_answers(out / "detections.jsonl")
    assert {a["file"]: a["timing_ms"] for a in again} == {f: a["timing_ms"] for f, a in answers.items()}

    # other settings start over
    assert main([*argv[:4], "--budget", "0.3", *argv[6:]]) == 0
    assert "resuming" not in capsys.readouterr().out
    header, lines = read_answers(out / "detections.jsonl")
    assert header["max_pixels_ratio"] == 0.3 and len(lines) == 2
    assert all(a["cost"]["pixels_ratio"] <= 0.3 + 1e-9 for a in lines)


def test_detect_refuses_bad_input_before_loading_a_model(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no image file" in capsys.readouterr().err
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 48)).save(img)
    assert main(["detect", str(img), "--checkpoint", str(tiny_checkpoint), "--policy", "oracle",
                 "--out", str(tmp_path / "o")]) == 2
    assert "reads the ground truth" in capsys.readouterr().err
    assert main(["detect", str(img), "--frame-size", "200", "--out", str(tmp_path / "o")]) == 2  # overlap 256 > 200 / 2
    assert "frame_overlap" in capsys.readouterr().err
    assert main(["detect", str(img), "--set", "policies.entropy_max_side=0", "--out", str(tmp_path / "o")]) == 2
    assert "entropy_max_side must be > 0" in capsys.readouterr().err
    assert main(["detect", str(img), "--set", "zoom.merge.fuse_score=avg", "--out", str(tmp_path / "o")]) == 2
    assert "fuse_score must be one of max, mean" in capsys.readouterr().err
    for flag, value, message in [("--budget", "0", "must be > 0"), ("--max-latency-ms", "-5", "must be > 0"),
                                 ("--score-threshold", "1.5", "must be <= 1"), ("--budget", "lots", "invalid"),
                                 ("--frame-size", "0", "must be >= 1")]:
        with pytest.raises(SystemExit) as e:
            main(["detect", str(img), "--out", str(tmp_path / "o"), flag, value])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "detections.jsonl").exists()


def test_detect_frame_size_runs_a_large_image_as_frames(tmp_path, synth_small, tiny_checkpoint):
    from zoomdet.eval.detect import read_answers
    from zoomdet.zoom.windows import scene_frames

    img = sorted((synth_small.parent / "images").iterdir())[0]  # 320 x 240
    runs = {}
    for frame in (None, "160"):
        out = tmp_path / f"f{frame}"
        extra = ["--frame-size", frame, "--set", "zoom.frame_overlap=32", "--render"] if frame else []
        assert main(["detect", str(img), "--checkpoint", str(tiny_checkpoint), "--budget", "0.6", "--out", str(out),
                     "--no-progress", *extra]) == 0
        header, answers = read_answers(out / "detections.jsonl")
        runs[frame] = (header, answers[0])
    frames = scene_frames(320, 240, 160, 32)
    assert len(frames) == 6 and runs["160"][0]["config"]["zoom"]["frame_size"] == 160
    framed, whole = runs["160"][1], runs[None][1]
    assert framed["cost"]["detector_calls"] >= len(frames) > whole["cost"]["detector_calls"]  # a coarse pass per frame
    assert framed["cost"]["pixels_ratio"] <= 0.6 and framed["image"] == whole["image"] == {"width": 320, "height": 240}
    assert framed["frames"] == [list(f.as_tuple()) for f in frames] and whole["frames"] == []
    assert (tmp_path / "f160" / framed["rendered"]).is_file()  # the picture, with the frames drawn
    for d in framed["detections"]:
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= 320 and 0 <= y0 <= y1 <= 240


def test_detect_decodes_images_over_pils_limit_only_when_asked(tmp_path, tiny_checkpoint, monkeypatch):
    from PIL import Image

    from zoomdet.eval.detect import read_answers

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice this: a 64 x 48 image stands in
    img = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(img)
    base = ["detect", str(img), "--checkpoint", str(tiny_checkpoint), "--no-progress"]
    for flag, rc, error in [([], 1, "--max-image-pixels"), (["--max-image-pixels", "3000"], 1, "exceeds the limit of 3000"),
                            (["--max-image-pixels", "0", "--render"], 0, None), (["--max-image-pixels", "3072"], 0, None)]:
        out = tmp_path / f"o{len(flag) and flag[1]}"
        assert main([*base, "--out", str(out), *flag]) == rc
        (answer,) = read_answers(out / "detections.jsonl")[1]
        assert (error in answer["error"]) if error else answer["image"] == {"width": 64, "height": 48}
        assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's own limit is back for everything else
        if "--render" in flag:  # the picture reads the image under the run's limit too
            assert (out / answer["rendered"]).is_file()


def test_detect_through_ray_tasks_answers_as_in_process(tmp_path, synth_small, tiny_checkpoint, capsys):
    from zoomdet.eval.detect import read_answers

    images = synth_small.parent / "images"
    (tmp_path / "bad.jpg").write_text("not an image")
    files = [*map(str, sorted(images.iterdir())[:3]), str(tmp_path / "bad.jpg")]
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        assert main(["detect", *files, "--checkpoint", str(tiny_checkpoint), "--budget", "0.6", "--out", str(out),
                     "--no-progress", "--workers", workers]) == 1
        assert "bad.jpg" in capsys.readouterr().err
        header, lines = read_answers(out / "detections.jsonl")
        runs[workers] = (header, {a["file"]: a for a in lines})
    (h0, a0), (h2, a2) = runs["0"], runs["2"]
    assert h0 == h2 and sorted(a0) == sorted(a2) and "error" in a2[str((tmp_path / "bad.jpg").resolve())]
    for f, a in a0.items():
        if "error" not in a:
            assert a2[f]["detections"] == a["detections"] and a2[f]["regions"] == a["regions"]
            assert a2[f]["cost"] == a["cost"]
