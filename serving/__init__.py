"""The ZoomDet detection service (installed as ``zoomdet.serving``).

* :mod:`zoomdet.serving.app`: the Ray Serve application (FastAPI ingress + batched detector deployment);
* :mod:`zoomdet.serving.schemas`: request/response models;
* :mod:`zoomdet.serving.client`: a small Python client (``zoomdet query`` uses it);
* :mod:`zoomdet.serving.launch`: ``zoomdet serve``.

Submodules are imported on use, so the client does not pull in Ray.
"""
