"""The ZoomDet detection service: a Ray Serve application with a FastAPI ingress.

Deployments:

* :class:`DetectorServer` runs the detector. ``detect_crops`` takes the
  crops of one engine pass in one call and feeds each to a ``@serve.batch``
  method, so the crops of concurrent requests share forward passes (crops of
  equal size are stacked).
  It holds only weights: stateless per request.
* :class:`ZoomDetIngress` (FastAPI) decodes and validates the upload, runs
  the one :class:`~zoomdet.zoom.ZoomEngine` with a :class:`RemoteDetector`
  that sends crops to ``DetectorServer``, and answers with detections, cost,
  latency and, on request, the episode trace. The policy (R-net + agent or
  greedy) runs inside the ingress: it costs well under a millisecond per step,
  less than one extra Serve call per step would, so a separate deployment
  would not pay on CPU. Policies are stateless per call (per-episode data
  lives in the engine's ``EpisodeState``).

The colocated layout (:func:`build_colocated_app`, ``serving/config.colocated.yaml``)
binds no ``DetectorServer``: each ingress replica runs the detector itself,
one Serve call less per pass, for the lowest latency of a request alone.

``user_config`` (:class:`~zoomdet.serving.schemas.ServiceConfig`) carries
checkpoints, thresholds, the default budget and the input caps, so
``serve deploy`` with a changed config reloads them without a restart.

Start: ``serve run serving/config.yaml`` or ``zoomdet serve --config serving/config.yaml``.

Two rules of this module, both because Ray pickles the ingress class by
value: no ``from __future__ import annotations`` (FastAPI must see the real
``Request`` type, not a string it cannot resolve), and module-level helpers
come before the deployment classes (the pickled class carries the module
globals that exist when it is decorated).
"""


import asyncio
import base64
import binascii
import io
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from swagger_ui_bundle import swagger_ui_path

from zoomdet.serving.schemas import DetectJSON, DetectOptions, DetectorConfig, DetectResponse, Problem, ServiceConfig

__all__ = ["DetectorServer", "ZoomDetIngress", "RemoteDetector", "build_app", "build_colocated_app", "decode_image", "ServiceError", "fastapi_app"]

SUPPORTED_TYPES = {"image/jpeg", "image/png", "image/tiff", "image/bmp", "image/webp"}
PIL_FORMATS = {"JPEG", "PNG", "TIFF", "BMP", "WEBP", "MPO"}


class ClientSlots:
    """Requests in flight per client address, capped (:attr:`ServiceConfig.max_requests_per_client`).

    One per ingress replica; the replica's event loop is its only user, so no lock is needed. Addresses with
    nothing in flight are forgotten, so the table holds at most one entry per request in flight."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    def acquire(self, client: str, cap: Optional[int]) -> bool:
        """Take a slot for ``client``; ``False`` (nothing taken) when it already holds ``cap``."""
        n = self.in_flight.get(client, 0)
        if cap is not None and n >= cap:
            return False
        self.in_flight[client] = n + 1
        return True

    def release(self, client: str) -> None:
        n = self.in_flight.get(client, 0) - 1
        if n > 0:
            self.in_flight[client] = n
        else:
            self.in_flight.pop(client, None)


class ServiceError(Exception):
    """An error answered as ``application/problem+json`` with ``status``."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 while a detector replica is being replaced (Serve restarts one in seconds)."""


def problem(status: int, title: str, detail: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(Problem(title=title, status=status, detail=detail).model_dump(), status_code=status,
                        media_type="application/problem+json", headers=headers)


def problem_for(exc: BaseException) -> JSONResponse:
    """The problem+json answer for an exception raised while serving a request.

    :class:`ServiceError` keeps its status; the framework's own HTTP errors (404, 405, starlette's
    "Invalid multipart data", ...) keep theirs; a dead or unavailable detector replica (Ray's actor
    errors, also when wrapped in a task error) is 503 with ``Retry-After``, never a bare 500; a client
    that left halfway through its body is 499 (nginx's "client closed request");
    anything else is a 500 problem that names the exception type only.
    """
    if isinstance(exc, ServiceError):
        return problem(exc.status, exc.title, exc.detail)
    if isinstance(exc, ClientDisconnect):  # nobody reads the answer; the log says 499, not a server error
        return problem(499, "Client closed request", "the client left before its body had arrived")
    if isinstance(exc, StarletteHTTPException):
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Request refused"), str(exc.detail),
                       headers=getattr(exc, "headers", None))
    cause = exc.cause if isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None else exc
    if isinstance(cause, RayActorError) or type(cause).__name__ in ("ActorUnavailableError", "DeploymentUnavailableError"):
        return problem(503, "Detector unavailable", f"the detector replica failed ({type(cause).__name__}); "
                       f"it is being replaced, retry in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
    return problem(500, "Internal error", f"the request failed ({type(exc).__name__})")


def parse_options(query: dict, form: dict) -> dict:
    """Request options from the query string and the form (or JSON body) fields; the same key in both is 422."""
    both = sorted(set(query) & set(form))
    if both:
        raise ServiceError(422, "Invalid options", f"{', '.join(both)} given both in the query string and the body")
    return {**query, **form}


def _validation_detail(e) -> str:
    """Pydantic errors as one line: ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())


def replica_grpc_on_loopback() -> bool:
    """In a local-only Ray instance (``zoomdet serve``, see :mod:`zoomdet.serving.launch`), make this
    process's Serve replica bind its inter-deployment gRPC server to 127.0.0.1 instead of ``[::]``.

    Ray Serve 2.60 binds that server to ``[::]:0`` whatever the node address (``ray.serve._private.replica``
    calls ``add_port_to_grpc_server(server, "[::]:0")``), the one port of the service that would still
    listen on every interface. This module is imported in every replica before its servers start, so the
    call is wrapped here to bind loopback instead. Nothing changes when Ray is not local-only, or if Ray's
    internals moved (then the port stays as Ray binds it and the loopback test says so). Returns whether
    the wrap is in place.
    """
    import os

    from zoomdet.serving.launch import RAY_LOCAL_ONLY_ENV

    if os.environ.get(RAY_LOCAL_ONLY_ENV) != "0":
        return False
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        return False
    if getattr(bind, "zoomdet_loopback", False):
        return True

    def loopback_bind(server, address: str):
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return bind(server, address)

    loopback_bind.zoomdet_loopback = True
    replica.add_port_to_grpc_server = loopback_bind
    return True


replica_grpc_on_loopback()


class CancelledRayTaskLog(logging.Filter):
    """Logs a cancelled Ray task that nobody awaited in one line, not as a traceback.

    When a client leaves while the ingress is choosing a detector replica, Ray Serve 2.60's request
    router drops its queue-length probes of the replicas (``RunningReplica.get_queue_len``) without
    reading their result; they end with ``TaskCancelledError`` and asyncio reports each as "Task
    exception was never retrieved" with a traceback (ray-project/ray#52477, #53639). Nothing failed:
    the request was cancelled on purpose. This filter, on the ``asyncio`` logger, keeps such a record
    but as one line naming the exception; every other record passes unchanged, tracebacks included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TaskCancelledError):  # also RayTaskError(TaskCancelledError) and Serve's RequestCancelledError
            first = record.getMessage().splitlines()[0]
            record.msg, record.args = f"{first}: {type(exc).__name__} (a request cancelled because its client left)", ()
            record.exc_info, record.exc_text = None, None
        return True


def log_cancelled_ray_tasks_in_one_line() -> None:
    """Adds :class:`CancelledRayTaskLog` to the ``asyncio`` logger of this process, once."""
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, CancelledRayTaskLog) for f in log.filters):
        log.addFilter(CancelledRayTaskLog())


def decode_base64_image(text: str) -> bytes:
    """``image_base64`` to bytes: plain base64, base64 wrapped in lines (what ``base64`` and MIME write),
    or a ``data:<type>;base64,`` URI (what a browser's ``FileReader.readAsDataURL`` gives). 400 otherwise."""
    body = text.strip()
    if body.startswith("data:"):
        head, sep, body = body.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ServiceError(400, "Bad base64", "a data: URI must be data:<type>;base64,<data>")
    body = "".join(body.split())  # line breaks and spaces of wrapped base64
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "Bad base64", "image_base64 is not valid base64") from None


def _in_replica() -> bool:
    try:
        serve.get_replica_context()
        return True
    except Exception:  # RayServeException outside a real replica
        return False


def decode_image(data: bytes, max_pixels: int) -> torch.Tensor:
    """Decode an uploaded image to ``Tensor[3, H, W]`` in [0, 1], refusing what should not be decoded.

    The header is read first: a declared size over ``max_pixels`` is refused
    (413) before any pixel is decompressed, which also stops decompression
    bombs. Unknown formats are 415, undecodable or truncated data 400.

    8-bit images stay ``uint8`` (a quarter of float32's memory), as the in-process engine reads them
    (``EvalConfig.image_dtype: uint8``), so both cut the same crops; 16-bit and float images are float32.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from zoomdet.data.coco import image_to_tensor

    if not data:
        raise ServiceError(400, "Empty image", "the request carries no image bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # PIL's own cap (above ours), checked on the header
        raise ServiceError(413, "Image too large", f"the image header declares more than the cap of {max_pixels} "
                                                   "pixels") from None
    except UnidentifiedImageError:
        raise ServiceError(415, "Unsupported image", "the bytes are not an image format this service reads "
                                                     f"({', '.join(sorted(PIL_FORMATS))})") from None
    except (OSError, SyntaxError, ValueError) as e:  # a header cut short
        raise ServiceError(400, "Undecodable image", f"the image header could not be read ({e})") from None
    if img.format not in PIL_FORMATS:
        raise ServiceError(415, "Unsupported image", f"image format {img.format} is not accepted")
    w, h = img.size
    if w * h > max_pixels:
        raise ServiceError(413, "Image too large", f"{w}x{h} = {w * h} pixels exceeds the cap of {max_pixels}")
    if w < 16 or h < 16:
        raise ServiceError(400, "Image too small", f"{w}x{h}: each side must be at least 16 pixels")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return image_to_tensor(img, keep_uint8=True)
    except (OSError, SyntaxError, ValueError) as e:
        raise ServiceError(400, "Undecodable image", f"the image could not be decoded ({e})") from None


class RemoteDetector:
    """The engine's detector interface over the ``DetectorServer`` deployment: crops here, forward there.

    Attributes mirror :class:`~zoomdet.detector.Detector` (``batch_size``,
    ``checkpoint_id``, ``detector_id``, ``categories``) so :class:`ZoomEngine` cannot tell the difference.

    With ``max_call_pixels``, the crops go in consecutive calls of at most that many input pixels
    each (one crop per call when a crop alone is larger), cut just before each call: a request with
    many or big crops then holds neither the detector's queue nor this process's memory for long,
    and crops of other requests get in between its calls.
    """

    def __init__(self, handle, batch_size: int, checkpoint_id: str, detector_id: str, categories: dict[int, str],
                 max_call_pixels: Optional[int] = None) -> None:
        self.handle, self.batch_size, self.categories = handle, batch_size, categories
        self.checkpoint_id, self.detector_id = checkpoint_id, detector_id
        self.max_call_pixels = max_call_pixels

    def call_groups(self, windows) -> list[list[int]]:
        """Indices of ``windows`` per detector call, in order: consecutive runs of at most ``max_call_pixels``."""
        if not self.max_call_pixels:
            return [list(range(len(windows)))] if windows else []
        groups, size = [], 0
        for i, w in enumerate(windows):
            if groups and size + w.input_pixels <= self.max_call_pixels:
                groups[-1].append(i)
                size += w.input_pixels
            else:
                groups.append([i])
                size = w.input_pixels
        return groups

    def detect(self, image: torch.Tensor, windows, features: bool = True):
        """Cut and resize each group's crops here, send them, map the boxes back to image pixels.

        A crop that needs no resize from a ``uint8`` image travels as ``uint8`` (a quarter of the bytes;
        the detector converts it exactly as ``crop_window`` would); RoI features come back only when
        asked for (the coarse pass of a sequential policy)."""
        out = []
        for group in self.call_groups(windows):
            crops = [transfer_crop(image, windows[i]) for i in group]
            dets = self.handle.detect_crops.remote(crops, features).result()
            out += [d.with_boxes(windows[i].to_image(d.boxes)) for d, i in zip(dets, group)]
        return out


def load_detector(cfg: DetectorConfig):
    """The :class:`~zoomdet.detector.Detector` a :class:`DetectorConfig` names (the embedded one when ``checkpoint``
    is null): what ``DetectorServer`` holds, and what the colocated ingress holds itself."""
    from zoomdet.detector.detector import Detector, default_checkpoint

    return Detector.from_checkpoint(cfg.checkpoint or str(default_checkpoint()), device=cfg.device,
                                    batch_size=cfg.batch_size, proposal_density=cfg.proposal_density,
                                    proposal_min=cfg.proposal_min, settings=cfg.settings or None)


def detector_info(detector) -> dict:
    """What the ingress needs to know of the detector: checkpoint and detector ids, categories, batch size."""
    return {"checkpoint_id": detector.checkpoint_id, "detector_id": detector.detector_id, "categories": detector.categories,
            "batch_size": detector.batch_size}


def transfer_crop(image: torch.Tensor, window) -> torch.Tensor:
    """The crop of ``window`` as it goes to the detector deployment: ``uint8`` when ``image`` is ``uint8`` and
    the window needs no resize, else :func:`crop_window`'s float32; contiguous either way."""
    from zoomdet.detector.detector import crop_window

    if image.dtype == torch.uint8 and window.input_size == (window.height, window.width):
        return image[:, window.y0:window.y1, window.x0:window.x1].contiguous()
    return crop_window(image, window).contiguous()


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class DetectorServer:
    """The detector deployment: weights only, stateless per request.

    Args:
        config: a :class:`~zoomdet.serving.schemas.DetectorConfig` as a dict; ``user_config``
            (``reconfigure``) replaces it without a restart.
    """

    def __init__(self, config: Optional[dict] = None) -> None:
        self.config: Optional[DetectorConfig] = None
        self.detector = None
        self.reconfigure(config or {})

    def reconfigure(self, config: dict) -> None:
        cfg = DetectorConfig(**(config or {}))
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        if cfg != self.config:
            self.detector = load_detector(cfg)
            self.config = cfg
        self._forward_batch.set_max_batch_size(cfg.max_batch_size)
        self._forward_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def check_health(self) -> None:
        if self.detector is None:
            raise RuntimeError("detector not loaded")

    def info(self) -> dict:
        return detector_info(self.detector)

    async def detect_crops(self, crops: list[torch.Tensor], features: bool = True):
        """Crops already cut and resized by ``crop_window`` (or ``uint8`` crops at scale 1) -> their
        :class:`Detections` in crop pixels, with RoI features when ``features``.

        One call per engine pass (the coarse crop, then all fine crops of a
        request). Each crop goes through ``@serve.batch`` on its own, so crops
        of concurrent requests are gathered and crops of equal size share a
        forward pass. Ray Serve's local testing mode (the handle-level tests)
        has no replica context, which ``@serve.batch`` needs; there the crops
        run in one direct call."""
        if _in_replica():
            return list(await asyncio.gather(*(self._forward_batch(c, features) for c in crops)))
        return await asyncio.to_thread(self.detector.detect_crops, crops, features)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.001)
    async def _forward_batch(self, crops: list[torch.Tensor], features: list[bool]):
        """One forward over crops gathered across requests; features are computed if any crop asks and
        dropped from the others (they would only cross the wire for nothing)."""
        dets = await asyncio.to_thread(self.detector.detect_crops, crops, any(features))
        return [d if f else d.without_features() for d, f in zip(dets, features)]


STATIC = Path(__file__).resolve().parent / "static"
"""The page at ``GET /`` (index.html, app.js, app.css): plain HTML and JavaScript, no build step, no CDN."""

fastapi_app = FastAPI(
    title="ZoomDet", version="1", docs_url=None, redoc_url=None,  # /docs is served below from local files
    description="Coarse-to-fine object detection for high-resolution images. Every answer says what it cost: "
                "pixels processed relative to full resolution, detector calls, and per-stage latency. "
                "A page for people is at `/`.")
fastapi_app.mount("/static/app", StaticFiles(directory=STATIC), name="app")
fastapi_app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")


@fastapi_app.get("/docs", include_in_schema=False)
async def _docs():
    """Swagger UI from the ``swagger-ui-bundle`` package's files, so the docs work offline."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title="ZoomDet API",
                               swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                               swagger_css_url="/static/swagger/swagger-ui.css",
                               swagger_favicon_url="/static/swagger/favicon-32x32.png")


@fastapi_app.get("/", include_in_schema=False)
async def _page():
    """The page: upload or drop an image, choose policy and budget, see detections, regions and cost."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_problem(request: Request, exc: StarletteHTTPException):
    """The framework's own errors (404 unknown path, 405 wrong method, ...) as problem+json."""
    return problem_for(exc)


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_problem(request: Request, exc: RequestValidationError):
    return problem(422, "Invalid request", _validation_detail(exc))


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32, max_queued_requests=256)
@serve.ingress(fastapi_app)
class ZoomDetIngress:
    """HTTP ingress: decode, validate, run the zoom loop (see the module docstring).

    Args:
        detector: handle of the :class:`DetectorServer` deployment, or ``None`` for the colocated layout
            (:func:`build_colocated_app`: the detector runs in this process).
        config: a :class:`~zoomdet.serving.schemas.ServiceConfig` as a dict; ``user_config``
            (``reconfigure``) replaces it without a restart.

    Models are loaded on the first request or ``/readyz`` after a (re)configuration
    (they need the detector's checkpoint id, asked of the detector deployment).
    """

    def __init__(self, detector, config: Optional[dict] = None) -> None:
        log_cancelled_ray_tasks_in_one_line()  # clients that leave early: see CancelledRayTaskLog
        self.detector_handle = detector
        self.cfg = ServiceConfig(**(config or {}))
        self.engine = None
        self.load_error: Optional[str] = None
        self._lock = asyncio.Lock()
        self.policies: dict[str, Any] = {}
        self.ids: dict[str, Optional[str]] = {}
        self.slots = ClientSlots()
        self._metrics()

    def _metrics(self) -> None:
        from ray.serve import metrics

        self.m_pixels = metrics.Histogram("zoomdet_pixels_ratio", description="pixels_ratio per request",
                                          boundaries=[0.1, 0.25, 0.35, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0])
        self.m_regions = metrics.Histogram("zoomdet_regions_per_request", description="zoom windows per request",
                                           boundaries=[0.5, 1.5, 2.5, 3.5, 5.5, 8.5, 13.5])
        self.m_stage = metrics.Histogram("zoomdet_stage_latency_ms", description="latency per stage",
                                         boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
                                         tag_keys=("stage",))
        self.m_dropped = metrics.Counter("zoomdet_deadline_dropped_windows",
                                         description="zoom windows a request deadline left out")
        self.m_late = metrics.Counter("zoomdet_deadline_late_answers",
                                      description="answers that left after their deadline")

    def reconfigure(self, user_config: dict) -> None:
        """Take a new :class:`ServiceConfig`; models reload on the next request."""
        cfg = ServiceConfig(**(user_config or {}))
        if cfg != self.cfg or self.engine is None:
            self.cfg, self.engine, self.load_error = cfg, None, None

    async def ensure_loaded(self) -> None:
        """Load the policies and the engine for the current config (once); raises :class:`ServiceError` 503."""
        if self.engine is not None:
            return
        async with self._lock:
            if self.engine is not None:
                return
            try:
                info = await self.detector_handle.info.remote() if self.detector_handle is not None else None
                await asyncio.to_thread(self._load, info)
            except Exception as e:  # a bad checkpoint path, an agent for another detector, ...
                self.load_error = f"{type(e).__name__}: {e}"
                raise ServiceError(503, "Not ready", f"models failed to load: {self.load_error}") from None

    def _load(self, info: Optional[dict]) -> None:
        """Build the policies and the engine. ``info`` is the ``DetectorServer``'s :meth:`~DetectorServer.info`;
        ``None`` in the colocated layout, where the detector is loaded here from ``ServiceConfig.detector``."""
        from pathlib import Path

        from zoomdet.config import load_config
        from zoomdet.detector.detector import file_digest
        from zoomdet.eval.evaluator import EvalConfig
        from zoomdet.zoom.engine import ZoomEngine
        from zoomdet.zoom.policies import make_policy

        cfg = self.cfg
        local = None
        if info is None:  # colocated: the detector runs in this process, no Serve call per pass
            dcfg = cfg.detector or DetectorConfig()
            if dcfg.torch_threads:
                torch.set_num_threads(dcfg.torch_threads)
            local = load_detector(dcfg)
            info = detector_info(local)
        base = load_config(EvalConfig, cfg.engine_config)
        zoom, pcfg = base.zoom, base.policies
        zoom.max_pixels_ratio, zoom.max_steps = cfg.max_pixels_ratio, cfg.max_steps
        zoom.max_pass_pixels = cfg.max_pass_pixels
        if cfg.rnet:
            pcfg.rnet = cfg.rnet
        did = info["detector_id"]  # R-nets and agents are checked against it
        names = ["fine", "coarse", "sahi", "random", "greedy-entropy"] + (["greedy"] if pcfg.rnet else [])
        policies = {n: make_policy(n, pcfg, zoom, did) for n in names}
        if cfg.agent:
            policies["agent"] = make_policy(cfg.agent, pcfg, zoom, did)
        default = cfg.default_policy or ("agent" if cfg.agent else "greedy" if pcfg.rnet else "fine")
        if default not in policies:
            raise ValueError(f"default_policy {default!r} is not loaded (have {sorted(policies)})")
        detector = local or RemoteDetector(self.detector_handle, info["batch_size"], info["checkpoint_id"], did, info["categories"],
                                           cfg.max_pass_pixels)
        self.ids = {"detector": info["checkpoint_id"],
                    "rnet": file_digest(pcfg.rnet) if pcfg.rnet and Path(pcfg.rnet).is_file() else None,
                    "agent": "+".join(file_digest(p) for p in cfg.agent.split("+"))
                    if cfg.agent and all(Path(p).is_file() for p in cfg.agent.split("+")) else None}
        self.categories, self.policies, self.default_policy = info["categories"], policies, default
        self.engine = ZoomEngine(detector, zoom)

    async def check_health(self) -> None:
        if self.load_error:
            raise RuntimeError(self.load_error)

    # ------------------------------------------------------------------ core (also called through handles)
    async def infer(self, data: bytes, options: dict, arrived: Optional[float] = None) -> dict:
        """Detect objects in an encoded image; ``options`` as :class:`DetectOptions`. Raises :class:`ServiceError`.

        ``arrived``: the ``time.perf_counter()`` at which the request arrived (default: now), from which its
        ``max_latency_ms`` counts."""
        arrived = time.perf_counter() if arrived is None else arrived
        await self.ensure_loaded()
        try:
            opts = DetectOptions(**options)
        except ValidationError as e:
            raise ServiceError(422, "Invalid options", _validation_detail(e)) from None
        if len(data) > self.cfg.max_body_bytes:
            raise ServiceError(413, "Body too large", f"{len(data)} bytes exceeds the cap of {self.cfg.max_body_bytes}")
        name = opts.policy or self.default_policy
        if name not in self.policies:
            raise ServiceError(422, "Unknown policy", f"policy {name!r} is not available; choose from {sorted(self.policies)}")
        t0 = time.perf_counter()
        image = await asyncio.to_thread(decode_image, data, self.cfg.max_image_pixels)
        decode = time.perf_counter() - t0
        policy = self.policies[name]
        limit_ms = self.cfg.max_latency_ms if opts.max_latency_ms is None else opts.max_latency_ms
        deadline = None if limit_ms is None else arrived + limit_ms / 1000
        result = await asyncio.to_thread(self.engine.run, image, policy, max_pixels_ratio=opts.max_pixels_ratio,
                                         max_steps=opts.max_steps, decode_seconds=decode, deadline=deadline)
        late = deadline is not None and time.perf_counter() > deadline
        if result.dropped:
            self.m_dropped.inc(result.dropped)
        if late:
            self.m_late.inc()
        return self._response(result, name, policy, opts, limit_ms, late)

    def _response(self, result, name: str, policy, opts: DetectOptions, limit_ms: Optional[float], late: bool) -> dict:
        from zoomdet.zoom.episode import answer_record, episode_record

        thr = self.cfg.score_threshold if opts.score_threshold is None else opts.score_threshold
        budget = self.cfg.max_pixels_ratio if opts.max_pixels_ratio is None else opts.max_pixels_ratio
        answer = answer_record(result, self.categories, policy=policy.name, max_pixels_ratio=budget,
                               score_threshold=thr, max_latency_ms=limit_ms, late=late)
        out = {"request_id": uuid.uuid4().hex, **answer, "model": self.ids, "trace": None}
        if opts.return_trace:
            out["trace"] = episode_record(result, self.engine.config, policy=policy.name, categories=self.categories,
                                          image={}, lam=opts.lam, max_pixels_ratio=opts.max_pixels_ratio or self.cfg.max_pixels_ratio)
        self.m_pixels.observe(result.cost.pixels_ratio)
        self.m_regions.observe(len(out["regions"]))
        for k, v in out["timing_ms"].items():
            self.m_stage.observe(v, tags={"stage": k})
        return out

    async def read_body(self, request: Request) -> bytes:
        """The request body, read chunk by chunk: 413 as soon as it passes ``max_body_bytes`` (whatever
        Content-Length said, chunked bodies included), 408 when it has not all arrived within
        ``body_timeout_s``. Nothing past the cap is kept."""
        cap, chunks, total = self.cfg.max_body_bytes, [], 0

        async def read() -> None:
            nonlocal total
            async for chunk in request.stream():
                total += len(chunk)
                if total > cap:
                    raise ServiceError(413, "Body too large", f"the body passed the cap of {cap} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(408, "Request timeout", f"the body did not arrive within {self.cfg.body_timeout_s:g} s "
                                                       f"({total} bytes received)") from None
        return b"".join(chunks)

    # ------------------------------------------------------------------ HTTP
    @fastapi_app.post("/v1/detect", response_model=DetectResponse, responses={
        400: {"model": Problem}, 408: {"model": Problem}, 413: {"model": Problem}, 415: {"model": Problem},
        422: {"model": Problem}, 429: {"model": Problem}, 503: {"model": Problem}},
        summary="Detect objects; the answer includes pixels processed and latency",
        openapi_extra={"requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "format": "binary"}, "policy": {"type": "string", "example": "greedy"},
                "max_pixels_ratio": {"type": "number", "example": 0.6}, "max_steps": {"type": "integer"},
                "lambda": {"type": "number"}, "score_threshold": {"type": "number", "example": 0.3},
                "max_latency_ms": {"type": "number", "example": 1000},
                "return_trace": {"type": "boolean"}}}},
            "application/json": {"schema": DetectJSON.model_json_schema(), "example": {
                "image_base64": "<base64 of a JPEG>", "policy": "greedy", "max_pixels_ratio": 0.6}}}}})
    async def detect(self, request: Request):
        arrived = time.perf_counter()
        client = request.client.host if request.client else "unknown"
        cap = self.cfg.max_requests_per_client
        if not self.slots.acquire(client, cap):
            return problem(429, "Too many requests", f"{client} already has {cap} requests in flight; retry when "
                                                     f"one has finished", headers={"Retry-After": "1"})
        try:
            return await self._detect(request, arrived)
        finally:
            self.slots.release(client)

    async def _detect(self, request: Request, arrived: float):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            return problem(400, "Bad request", "Content-Length is not a number")
        if declared > self.cfg.max_body_bytes:
            return problem(413, "Body too large", f"{declared} bytes exceeds the cap of {self.cfg.max_body_bytes}")
        try:
            if ctype not in SUPPORTED_TYPES | {"multipart/form-data", "application/json"}:
                raise ServiceError(415, "Unsupported media type", f"send multipart/form-data (field 'image'), "
                                                                  f"application/json with image_base64, or an image body; got {ctype or 'none'}")
            body = await self.read_body(request)
            if ctype == "multipart/form-data":
                async def replay():  # the form parser reads the body already received (and capped) above
                    return {"type": "http.request", "body": body, "more_body": False}

                form = await Request(request.scope, replay).form(max_part_size=self.cfg.max_body_bytes)
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise ServiceError(400, "Missing image", "the multipart form needs a file field named 'image'")
                if upload.content_type and upload.content_type.lower() not in SUPPORTED_TYPES | {"application/octet-stream"}:
                    raise ServiceError(415, "Unsupported media type", f"file content type {upload.content_type}")
                data = await upload.read()
                options = parse_options(dict(request.query_params), {k: v for k, v in form.items() if k != "image"})
            elif ctype == "application/json":
                try:
                    doc = DetectJSON.model_validate_json(body)
                except ValidationError as e:
                    raise ServiceError(422, "Invalid request", _validation_detail(e)) from None
                data = decode_base64_image(doc.image_base64)
                options = parse_options(dict(request.query_params),
                                        doc.model_dump(exclude={"image_base64"}, by_alias=True, exclude_none=True))
            else:  # an image body
                data = body
                options = dict(request.query_params)
            # the answer is built by this module from plain values, and DetectResponse (the documented
            # schema, checked by the tests) describes it: a JSONResponse skips FastAPI's validation and
            # re-encoding of it against response_model, ~4 ms for 300 detections on one core
            return JSONResponse(await self.infer(data, options, arrived))
        except Exception as e:  # ServiceError, bad multipart, a dead replica (503 + Retry-After), anything else
            return problem_for(e)

    @fastapi_app.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @fastapi_app.get("/readyz", summary="Readiness: models loaded", responses={503: {"model": Problem}})
    async def readyz(self):
        try:
            await self.ensure_loaded()
        except ServiceError as e:
            return problem(e.status, e.title, e.detail)
        return {"status": "ready", "policies": sorted(self.policies), "default_policy": self.default_policy, "model": self.ids}


def build_app(args: Optional[dict] = None):
    """Application builder for ``serve run`` (``import_path: zoomdet.serving.app:build_app``) and tests.

    Args:
        args: ``{"detector": DetectorConfig fields, "service": ServiceConfig fields}``; a YAML
            config's per-deployment ``user_config`` then replaces either through ``reconfigure``.
    """
    args = args or {}
    det = DetectorConfig(**(args.get("detector") or {}))
    svc = ServiceConfig(**(args.get("service") or {}))
    return ZoomDetIngress.bind(DetectorServer.bind(det.model_dump()), svc.model_dump())


def build_colocated_app(args: Optional[dict] = None):
    """Application builder for the colocated layout (``serving/config.colocated.yaml``): no ``DetectorServer``;
    each ingress replica runs the detector itself with ``ServiceConfig.detector``.

    One Serve hop less per detector pass (the coarse pass, then the fine crops), for the lowest latency
    of a request alone; the price is no batching of crops across requests, and detector and ingress scale
    together. Scale it with ``num_replicas`` of the ingress (one torch thread each on CPU).

    Args:
        args: ``{"service": ServiceConfig fields}``; the YAML's ``user_config`` replaces it.
    """
    svc = ServiceConfig(**((args or {}).get("service") or {}))
    return ZoomDetIngress.bind(None, svc.model_dump())
