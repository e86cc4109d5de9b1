"""ZoomDet: coarse-to-fine object detection for high-resolution imagery.

A base detector runs on a downsampled image; policies choose regions to
re-detect at full resolution; one zoom engine runs the passes, merges the
results and accounts for every pixel the detector saw.
"""

from zoomdet.types import Detections, Window

__version__ = "0.1.0"
__all__ = ["Detections", "Window", "__version__"]
