"""Load test of the detection service on loopback: throughput, latency percentiles, HTTP overhead, replica kill.

    python benchmarks/serve_load.py --requests 1000 --concurrency 16 --out runs/bench/serve_load.json

Starts ``zoomdet serve --config serving/config.yaml`` in a subprocess on a
free loopback port (or uses ``--url``), then:

1. *in-process*: the same image and policy through :class:`ZoomEngine` with a
   local detector, ``--baseline`` times; the median is the in-process latency;
2. *overhead*: ``--baseline`` requests one at a time over HTTP, each right
   after one in-process run (interleaved, so both see the same machine);
   HTTP overhead = p50 over HTTP minus p50 in-process (the goal is <= 15 ms);
   ``GET /healthz`` beside them times the bare proxy round trip;
3. *load*: ``--requests`` requests at ``--concurrency``; counts 2xx/4xx/5xx and
   lost requests (connection errors, timeouts); throughput and p50/p95/p99;
4. *replica kill* (``--kill``): SIGKILL the processes of the replicas that run
   the detector under load (``DetectorServer``; ``ZoomDetIngress`` in the
   colocated layout), keep sending; report the failures during recovery, the recovery time
   and that requests after recovery succeed;
5. *big image* (``--big 6000x6000``): one PNG that decodes to that size (a few
   tens of kB: a compression bomb under the pixel cap) sent with ``--big-policy``,
   while small requests go one at a time beside it; reports the peak resident
   memory of the ingress and detector replicas above idle (sampled every
   0.1 s) and how much longer the small requests took than alone.

6. *deadlines* (``--deadlines 0 2000 1500 1000 --rounds 2``): the load again
   at each request deadline (``max_latency_ms``; 0: none), ``--rounds``
   times, the deadlines interleaved within each round so that all see the
   same machine; per deadline: throughput, latency percentiles and what
   the answers held (mean pixels_ratio, zoom regions, windows left out,
   answers still past their deadline), per round and their spread. One row
   per deadline (scenario ``deadline``); the plain *load* is then not run.

Everything is bounded by ``--time-limit`` seconds. Prints a JSON document;
``--out`` also writes it. Each scenario that ran (``overhead``, ``load``,
``replica_kill``, ``big_image``) is also a row of
``benchmarks/results/serve_load.json`` with the command and the date,
replacing that scenario's earlier row for the same layout (``split``:
``serving/config.yaml``, a detector deployment; ``colocated``:
``serving/config.colocated.yaml``, the detector inside the ingress;
``--requests 0`` skips the load, so
``--requests 0 --big 6000x6000`` reruns the big-image row alone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.asarray(xs) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def make_image(size: tuple[int, int]) -> bytes:
    from zoomdet.data.synth import SynthConfig, generate_dataset

    d = Path(tempfile.mkdtemp(prefix="zoomdet-load-"))
    ann = generate_dataset(SynthConfig(images=1, width=size[0], height=size[1], seed=5), d, progress=False)
    img = json.loads(Path(ann).read_text())["images"][0]["file_name"]
    return (d / "images" / img).read_bytes()


def start_service(config: str, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zoomdet.cli", "serve", "--config", config, "--port", str(port)],
                            cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def wait_ready(url: str, proc, timeout: float = 300) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the service exited while starting; see its log")
        try:
            if requests.get(f"{url}/readyz", timeout=60).status_code == 200:
                return time.time() - t0
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def one(session: requests.Session, url: str, data: bytes, policy: str, budget: float, out: list | None = None,
        max_latency_ms: float | None = None, answers: list | None = None) -> tuple[float, object]:
    """One request; returns (seconds, status or exception name); appends the response's timing_ms to ``out``
    and (pixels_ratio, zoom regions, regions_dropped, deadline_exceeded) to ``answers``."""
    t = time.perf_counter()
    form = {"policy": policy, "max_pixels_ratio": str(budget)}
    if max_latency_ms is not None:
        form["max_latency_ms"] = str(max_latency_ms)
    try:
        r = session.post(f"{url}/v1/detect", files={"image": ("img.jpg", data, "image/jpeg")}, data=form, timeout=120)
        body = r.json() if r.status_code == 200 and (out is not None or answers is not None) else None
        if out is not None and body is not None:
            out.append(body["timing_ms"])
        if answers is not None and body is not None:
            answers.append((body["cost"]["pixels_ratio"], len(body["regions"]), body.get("regions_dropped", 0),
                            bool(body.get("deadline_exceeded"))))
        return time.perf_counter() - t, r.status_code
    except requests.RequestException as e:
        return time.perf_counter() - t, type(e).__name__


def _in_process_worker(conn, threads: int, policy: str, budget: float, data: bytes) -> None:
    """Child process: build the engine once (synth config, embedded detector, ``threads`` torch threads), then
    run the image through it each time it is asked; answers (seconds, stage ms) with decode included."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # as Ray sets it for a replica
    import torch

    from zoomdet.config import load_config
    from zoomdet.detector.detector import Detector, default_checkpoint
    from zoomdet.eval.evaluator import EvalConfig
    from zoomdet.serving.app import decode_image
    from zoomdet.zoom.engine import ZoomEngine
    from zoomdet.zoom.policies import make_policy

    torch.set_num_threads(threads)
    cfg = load_config(EvalConfig, str(REPO / "configs/eval/synth.yaml"))
    det = Detector.from_checkpoint(default_checkpoint())
    engine, pol = ZoomEngine(det, cfg.zoom), make_policy(policy, cfg.policies, cfg.zoom, det.detector_id)
    engine.run(decode_image(data, 40_000_000), pol, max_pixels_ratio=budget)  # warm-up
    conn.send("ready")
    while conn.recv():
        t = time.perf_counter()
        res = engine.run(decode_image(data, 40_000_000), pol, max_pixels_ratio=budget)
        conn.send((time.perf_counter() - t, {k: 1000 * v for k, v in res.timing.items()}))


class InProcess:
    """The in-process engine in a fresh child process (spawned, so no state of this one comes along)."""

    def __init__(self, threads: int, policy: str, budget: float, data: bytes) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_in_process_worker, args=(child, threads, policy, budget, data), daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("the in-process worker did not start")

    def run(self) -> tuple[float, dict]:
        """One request through the engine: (seconds, {stage: ms})."""
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.proc.join(30)


def measure_overhead(url: str, data: bytes, a, report: dict, s: requests.Session) -> None:
    """The *overhead* scenario into ``report``: the in-process engine (fresh child processes) against
    ``a.baseline`` sequential HTTP requests, interleaved, and ``GET /healthz`` beside them."""
    # in-process reference: same engine config, same image, same policy, in a fresh process of its own
    # (the benchmark's own threads and an earlier all-cores run would otherwise slow it down)
    allcores_worker = InProcess(os.cpu_count() or 1, a.policy, a.budget, data)
    report["in_process_all_cores"] = percentiles([allcores_worker.run()[0] for _ in range(a.baseline)])
    allcores_worker.close()
    worker = InProcess(1, a.policy, a.budget, data)  # a detector replica has one torch thread
    one(s, url, data, a.policy, a.budget)  # warm-up
    for _ in range(5):
        s.get(f"{url}/healthz", timeout=30)
    # overhead: in-process and HTTP requests interleaved, one after the other, so both see the same
    # machine (a busy moment slows both, instead of only whichever ran then); plus GET /healthz, the
    # bare proxy-to-ingress round trip with no body and no engine
    inproc, inproc_stages, served_stages, seq, health = [], [], [], [], []
    for _ in range(a.baseline):
        sec, stages = worker.run()
        inproc.append(sec)
        inproc_stages.append(stages)
        seq.append(one(s, url, data, a.policy, a.budget, served_stages))
        t = time.perf_counter()
        s.get(f"{url}/healthz", timeout=30)
        health.append(time.perf_counter() - t)
    worker.close()
    seq_ok = [lat for lat, st in seq if st == 200]
    report["healthz"] = percentiles(health)
    report["in_process"] = percentiles(inproc)
    report["http_sequential"] = percentiles(seq_ok)
    report["http_overhead_p50_ms"] = (statistics.median(seq_ok) - statistics.median(inproc)) * 1000 if seq_ok else None
    # where the overhead goes: median stage times inside the service's engine vs in-process, and the
    # part outside the engine (proxy, HTTP, multipart, response encoding) = client latency - engine total
    med = lambda rows, k: statistics.median(r.get(k, 0.0) for r in rows) if rows else None  # noqa: E731
    stages = ("decode", "coarse", "gain", "policy", "fine", "merge", "total")
    report["stages_p50_ms"] = {"in_process": {k: med(inproc_stages, k) for k in stages},
                               "service": {k: med(served_stages, k) for k in stages}}
    report["outside_engine_p50_ms"] = (statistics.median(seq_ok) * 1000 - med(served_stages, "total")
                                       if seq_ok and served_stages else None)


def run_load(url, data, policy, budget, n, concurrency, deadline, on_progress=None, max_latency_ms=None, answers=None):
    sessions = [requests.Session() for _ in range(concurrency)]
    results: list[tuple[float, float, object]] = []  # (start offset, latency, status)
    t0 = time.perf_counter()

    def task(i: int):
        if time.time() > deadline:
            return (time.perf_counter() - t0, 0.0, "skipped")
        start = time.perf_counter() - t0
        lat, st = one(sessions[i % concurrency], url, data, policy, budget, max_latency_ms=max_latency_ms, answers=answers)
        if on_progress:
            on_progress(i)
        return (start, lat, st)

    with ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(task, range(n)))
    return results, time.perf_counter() - t0


def summarize_answers(answers: list) -> dict:
    """What the 200 answers held: mean pixels_ratio, zoom regions and windows a deadline left out, and the
    share that still came past their deadline."""
    if not answers:
        return {}
    a = np.asarray(answers, dtype=float)
    return {"mean_pixels_ratio": float(a[:, 0].mean()), "mean_regions": float(a[:, 1].mean()),
            "mean_regions_dropped": float(a[:, 2].mean()), "answers_with_regions_dropped": float((a[:, 2] > 0).mean()),
            "deadline_exceeded_share": float(a[:, 3].mean())}


def run_deadlines(url: str, data: bytes, a, stop_at: float) -> list[dict]:
    """The *deadlines* scenario: ``a.requests`` requests at ``a.concurrency`` per deadline per round, the
    deadlines in the given order within each round. One dict per deadline: each round's figures, and the
    mean, least and most of throughput, p95, p99 and mean pixels_ratio over the rounds."""
    per: dict[float, list[dict]] = {ms: [] for ms in a.deadlines}
    for r in range(a.rounds):
        for ms in a.deadlines:
            answers: list = []
            results, wall = run_load(url, data, a.policy, a.budget, a.requests, a.concurrency, stop_at,
                                     max_latency_ms=ms or None, answers=answers)
            s = summarize(results, wall)
            per[ms].append({"round": r, **s, "answers": summarize_answers(answers)})
            print(f"round {r}, deadline {ms or 'none'}: {s['throughput_rps']:.2f} requests/s, "
                  f"p99 {s['latency_ok'].get('p99_ms', float('nan')):.0f} ms", file=sys.stderr)
    rows = []
    for ms, rounds in per.items():
        def spread(get):
            v = [get(x) for x in rounds if get(x) is not None]
            return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v))} if v else None
        rows.append({"max_latency_ms": ms or None, "requests": a.requests, "concurrency": a.concurrency,
                     "rounds": rounds,
                     "throughput_rps": spread(lambda x: x["throughput_rps"]),
                     "p50_ms": spread(lambda x: x["latency_ok"].get("p50_ms")),
                     "p95_ms": spread(lambda x: x["latency_ok"].get("p95_ms")),
                     "p99_ms": spread(lambda x: x["latency_ok"].get("p99_ms")),
                     "mean_pixels_ratio": spread(lambda x: x["answers"].get("mean_pixels_ratio")),
                     "answers_with_regions_dropped": spread(lambda x: x["answers"].get("answers_with_regions_dropped")),
                     "deadline_exceeded_share": spread(lambda x: x["answers"].get("deadline_exceeded_share"))})
    return rows


def summarize(results, wall) -> dict:
    done = [r for r in results if r[2] != "skipped"]
    codes: dict[str, int] = {}
    failures: dict[str, int] = {}  # every answer that was not a 200, by exact status (or exception name)
    for _, _, st in done:
        key = f"{st // 100}xx" if isinstance(st, int) else "lost"
        codes[key] = codes.get(key, 0) + 1
        if st != 200:
            failures[str(st)] = failures.get(str(st), 0) + 1
    ok = [lat for _, lat, st in done if st == 200]
    return {"sent": len(done), "skipped_by_time_limit": len(results) - len(done), "status": codes, "failures": failures,
            "throughput_rps": len(ok) / wall if wall > 0 else 0.0, "wall_s": wall, "latency_ok": percentiles(ok)}


def descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (from /proc), so the benchmark only ever touches its own server."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def replica_pids(server_pid: int, deployment: str) -> list[int]:
    """The replicas of ``deployment`` in the server this benchmark started (never another user's)."""
    pids = []
    for pid in descendants(server_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"ServeReplica:zoomdet:{deployment}" in cmd:
            pids.append(pid)
    return pids


def rss_mb(pids: list[int]) -> float:
    """Summed resident memory of ``pids``, MB (from /proc; a vanished process counts 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def big_image(size: tuple[int, int]) -> bytes:
    """A PNG of ``size`` that compresses to a few tens of kB: dark ground, a few bright vehicles."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (30, 30, 30))
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 40))
        draw.rectangle([x, y, x + 24 + int(rng.integers(0, 30)), y + 14 + int(rng.integers(0, 20))], fill=(220, 220, 200))
    buf = __import__("io").BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def run_big(url: str, server_pid: int, size: tuple[int, int], policy: str, small: bytes, small_policy: str,
            budget: float, deadline: float) -> dict:
    """One big upload beside sequential small requests: memory above idle and the small requests' extra wait."""
    import threading

    pids = replica_pids(server_pid, "ZoomDetIngress") + replica_pids(server_pid, "DetectorServer")
    data = big_image(size)
    s = requests.Session()
    alone = [one(s, url, small, small_policy, budget)[0] for _ in range(5)]
    idle = rss_mb(pids)
    peak, big_result, stop = [idle], {}, threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pids))
            time.sleep(0.1)

    def send_big():
        t = time.perf_counter()
        try:
            r = requests.post(f"{url}/v1/detect", files={"image": ("big.png", data, "image/png")},
                              data={"policy": policy}, timeout=max(60.0, deadline - time.time()))
            body = r.json()
            big_result.update(status=r.status_code, pixels_ratio=body.get("cost", {}).get("pixels_ratio"),
                              detector_calls=body.get("cost", {}).get("detector_calls"),
                              detections=len(body.get("detections", [])), detail=body.get("detail"))
        except requests.RequestException as e:
            big_result.update(status=type(e).__name__)
        big_result["seconds"] = time.perf_counter() - t

    sampler, big = threading.Thread(target=sample, daemon=True), threading.Thread(target=send_big)
    sampler.start()
    big.start()
    beside = []
    while big.is_alive() and time.time() < deadline:
        lat, st = one(s, url, small, small_policy, budget)
        beside.append(lat if st == 200 else float("nan"))
    big.join()
    stop.set()
    sampler.join()
    base = statistics.median(alone)
    ok = [x for x in beside if x == x]
    return {"size": f"{size[0]}x{size[1]}", "png_bytes": len(data), "policy": policy, "big": big_result,
            "idle_rss_mb": idle, "peak_rss_mb": peak[0], "peak_above_idle_mb": peak[0] - idle,
            "small_alone_p50_ms": 1000 * base, "small_beside_requests": len(beside),
            "small_beside_failed": len(beside) - len(ok),
            "small_extra_wait_p50_ms": 1000 * (statistics.median(ok) - base) if ok else None,
            "small_extra_wait_max_ms": 1000 * (max(ok) - base) if ok else None}


def ingress_setting(config: str, key: str):
    """``key`` of the ingress's ``user_config`` in the Serve config, else :class:`ServiceConfig`'s default."""
    import yaml

    from zoomdet.serving.schemas import ServiceConfig

    cfg = yaml.safe_load(Path(config).read_text())
    for app in cfg.get("applications", []):
        for dep in app.get("deployments", []):
            if dep.get("name") == "ZoomDetIngress" and key in (dep.get("user_config") or {}):
                return dep["user_config"][key]
    return ServiceConfig.model_fields[key].default


def layout(config: str) -> str:
    """``colocated`` when the Serve config builds :func:`~zoomdet.serving.app.build_colocated_app` (the detector
    inside the ingress), else ``split`` (a ``DetectorServer`` deployment)."""
    import yaml

    apps = yaml.safe_load(Path(config).read_text()).get("applications", [])
    return "colocated" if any(str(a.get("import_path", "")).endswith(":build_colocated_app") for a in apps) else "split"


def write_scenarios(report: dict) -> None:
    """One row per scenario that ran in ``benchmarks/results/serve_load.json`` (replacing its earlier row)."""
    from zoomdet.eval.results import command_line, write_results

    common = {k: report[k] for k in ("layout", "config", "policy", "budget", "size", "cpus", "date") if k in report}
    common.update(command=command_line(), startup_s=report.get("startup_s"))
    scenarios = {"overhead": {k: report.get(k) for k in ("in_process", "in_process_all_cores", "http_sequential",
                                                         "http_overhead_p50_ms", "healthz",
                                                         "stages_p50_ms", "outside_engine_p50_ms")}}
    for key in ("load", "replica_kill", "big_image"):
        if key in report:
            scenarios[key] = report[key]
    for name, body in scenarios.items():
        if name == "overhead" and not report.get("http_sequential"):
            continue
        write_results("serve_load", [{"scenario": name, **common, **body}],
                      replace={"scenario": name, "layout": common["layout"]},
                      required=("scenario", "command", "date"))
    if "deadlines" in report:
        write_results("serve_load", [{"scenario": "deadline", **common, **row} for row in report["deadlines"]],
                      replace={"scenario": "deadline", "layout": common["layout"]}, required=("scenario", "command", "date"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running service (default: start one)")
    ap.add_argument("--config", default="serving/config.yaml")
    ap.add_argument("--image", help="image file (default: a synthetic --size image)")
    ap.add_argument("--size", default="640x480", help="WxH of the synthetic image (default 640x480)")
    ap.add_argument("--policy", default="greedy-entropy")
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--baseline", type=int, default=30, help="sequential requests for the overhead (default 30; "
                                                             "0 skips the overhead scenario)")
    ap.add_argument("--kill", action="store_true", help="also kill the detector replica under load")
    ap.add_argument("--kill-requests", type=int, default=200)
    ap.add_argument("--big", metavar="WxH", help="also send one image of this size (e.g. 6000x6000) beside small "
                                                 "requests: memory and extra wait")
    ap.add_argument("--big-policy", default="fine", help="policy of the big request (default fine: the costliest)")
    ap.add_argument("--time-limit", type=float, default=900, help="stop sending after this many seconds")
    ap.add_argument("--deadlines", type=float, nargs="+", metavar="MS", help="also run the load at each of these "
                    "request deadlines (max_latency_ms; 0: none), interleaved, --rounds times")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the --deadlines sweep (default 2)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.deadlines and (any(ms < 0 for ms in a.deadlines) or a.rounds < 1):
        ap.error("--deadlines must be >= 0 (0: none) and --rounds >= 1")
    if (a.kill or a.big) and a.url:
        ap.error("--kill and --big watch the processes of the server this benchmark starts; drop --url")
    deadline = time.time() + a.time_limit
    w, h = (int(v) for v in a.size.split("x"))
    data = Path(a.image).read_bytes() if a.image else make_image((w, h))

    proc, log = None, Path(tempfile.mkdtemp(prefix="zoomdet-serve-")) / "serve.log"
    url = a.url
    if not url:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = start_service(a.config, port, log)
    if a.image:
        from PIL import Image

        with Image.open(a.image) as im:
            a.size = f"{im.width}x{im.height}"
    report: dict = {"url": url, "config": a.config, "layout": layout(a.config), "policy": a.policy, "budget": a.budget,
                    "image_bytes": len(data), "size": a.size, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    try:
        report["startup_s"] = wait_ready(url, proc)
        s = requests.Session()
        if a.baseline:
            measure_overhead(url, data, a, report, s)

        if a.requests and not a.deadlines:  # with --deadlines, the load without one is the sweep's deadline 0
            answers: list = []
            results, wall = run_load(url, data, a.policy, a.budget, a.requests, a.concurrency, deadline, answers=answers)
            report["load"] = {"requests": a.requests, "concurrency": a.concurrency, **summarize(results, wall),
                              "answers": summarize_answers(answers),
                              **({"in_process_sequential_rps": 1000 / report["in_process"]["p50_ms"],
                                  "in_process_all_cores_sequential_rps": 1000 / report["in_process_all_cores"]["p50_ms"]}
                                 if a.baseline else {})}

        if a.deadlines:
            report["deadlines"] = run_deadlines(url, data, a, deadline)

        if a.kill:
            # the replicas that run the detector: the DetectorServer's, or in the colocated layout the ingress's
            target = "ZoomDetIngress" if report["layout"] == "colocated" else "DetectorServer"
            pids = replica_pids(proc.pid, target)
            killed = {"deployment": target, "pids": pids}
            t_kill = [None]

            def kill_at(i: int) -> None:
                if i == a.kill_requests // 4 and t_kill[0] is None and pids:
                    t_kill[0] = time.perf_counter()
                    for p in pids:
                        os.kill(p, signal.SIGKILL)

            results, wall = run_load(url, data, a.policy, a.budget, a.kill_requests, a.concurrency, deadline, kill_at)
            failed = [r for r in results if r[2] not in (200, "skipped")]
            last_fail = max((r[0] + r[1] for r in failed), default=None)
            after = [r for r in results if last_fail is not None and r[0] > last_fail] or results
            killed.update(summarize(results, wall))
            killed["failures_during_recovery"] = len(failed)
            killed["requests_after_last_failure"] = len(after)
            killed["all_after_recovery_ok"] = all(r[2] == 200 for r in after)
            # the service answers again after the kill
            killed["post_kill_check"] = one(s, url, data, a.policy, a.budget)[1]
            killed["new_replica_pids"] = replica_pids(proc.pid, target)
            report["replica_kill"] = killed
        if a.big:
            bw, bh = (int(v) for v in a.big.split("x"))
            report["big_image"] = run_big(url, proc.pid, (bw, bh), a.big_policy, data, a.policy, a.budget, deadline)
            report["big_image"]["max_pass_pixels"] = ingress_setting(a.config, "max_pass_pixels")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        report["service_log"] = str(log)
    text = json.dumps(report, indent=1)
    print(text)
    write_scenarios(report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
