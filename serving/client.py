"""A small Python client of the ZoomDet service (``zoomdet query`` uses it). Needs only ``requests``.

    from zoomdet.serving.client import ZoomDetClient

    client = ZoomDetClient("http://127.0.0.1:8000")
    answer = client.detect("image.jpg", policy="greedy", max_pixels_ratio=0.6)
    answer["detections"][0]["box_xyxy"], answer["cost"]["pixels_ratio"], answer["timing_ms"]["total"]
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any, Optional

import requests

__all__ = ["ZoomDetClient", "ServiceError", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8000"


class ServiceError(RuntimeError):
    """The service answered with an error (``application/problem+json``); ``status``, ``title``, ``detail``, and
    ``retry_after`` (seconds, from the ``Retry-After`` header of a 429 or 503; ``None`` without one)."""

    def __init__(self, status: int, title: str, detail: str, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.retry_after = status, title, detail, retry_after


class ZoomDetClient:
    """Client of ``POST /v1/detect``, ``GET /healthz`` and ``GET /readyz``.

    Args:
        url: base URL of the service.
        timeout: seconds per request.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 120.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()

    def detect(self, image: str | Path | bytes, *, policy: Optional[str] = None, max_pixels_ratio: Optional[float] = None,
               max_steps: Optional[int] = None, lam: Optional[float] = None, score_threshold: Optional[float] = None,
               max_latency_ms: Optional[float] = None, return_trace: bool = False,
               content_type: Optional[str] = None) -> dict[str, Any]:
        """Upload an image (path or encoded bytes) as multipart; returns the response JSON (see ``/docs``).

        Raises:
            ServiceError: the service refused the request (4xx/5xx), with its reason.
        """
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            data, name = path.read_bytes(), path.name
            content_type = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        else:
            data, name, content_type = bytes(image), "image", content_type or "application/octet-stream"
        form = {"policy": policy, "max_pixels_ratio": max_pixels_ratio, "max_steps": max_steps, "lambda": lam,
                "score_threshold": score_threshold, "max_latency_ms": max_latency_ms,
                "return_trace": "true" if return_trace else None}
        r = self.session.post(f"{self.url}/v1/detect", files={"image": (name, data, content_type)},
                              data={k: str(v) for k, v in form.items() if v is not None}, timeout=self.timeout)
        return self._json(r)

    def health(self) -> dict:
        return self._json(self.session.get(f"{self.url}/healthz", timeout=self.timeout))

    def ready(self) -> dict:
        return self._json(self.session.get(f"{self.url}/readyz", timeout=self.timeout))

    @staticmethod
    def _json(r: requests.Response) -> dict:
        if r.status_code >= 400:
            try:
                retry = float(r.headers["Retry-After"])
            except (KeyError, ValueError):
                retry = None
            try:
                p = r.json()
                raise ServiceError(r.status_code, p.get("title", r.reason), p.get("detail", r.text), retry)
            except ValueError:
                raise ServiceError(r.status_code, r.reason or "error", r.text[:500], retry) from None
        return r.json()
