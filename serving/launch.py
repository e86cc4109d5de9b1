"""``zoomdet serve``: start Ray Serve from a ZoomDet config file (what ``serve run CONFIG`` does, plus options).

The config is a Ray Serve config (``serving/config.yaml``). Before it is
handed to Ray Serve's own ``serve run``, ``--host``/``--port`` replace its
``http_options`` and relative paths in the deployments' ``user_config``
(``checkpoint``, ``engine_config``, ``rnet``, ``agent``) are made absolute,
so replicas find the files whatever their working directory.

A Ray instance started here (no ``--address``) is a single-node one bound to
loopback: every Ray port (GCS, raylet, object manager, workers, agents)
listens on 127.0.0.1 only, whatever ``--host`` the HTTP proxy binds to. Ray
resolves a ``127.0.0.1`` node address to the machine's address, so this is
done with Ray's own switch for local-only instances,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when ``ray`` is imported), set
before the import. Joining a cluster (``--address``) leaves Ray's settings
alone.

Ray Serve gives a new HTTP proxy 5 s to answer its first ready check and
kills it otherwise; on a small machine whose cores are busy the proxy can
take longer, and ``serve run`` then fails at start. A Ray instance started
here gives it :data:`PROXY_READY_CHECK_TIMEOUT_S` instead (Ray's
``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S``; a value already set in the
environment wins).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import yaml

__all__ = ["resolve_config", "serve_config", "PATH_KEYS", "RAY_LOCAL_ONLY_ENV", "ray_local_only"]

PATH_KEYS = ("checkpoint", "engine_config", "rnet", "agent")


def resolve_config(path: str | Path, host: Optional[str] = None, port: Optional[int] = None,
                   base: Optional[Path] = None) -> dict:
    """The Serve config of ``path`` with host/port overrides and absolute model paths (validated by Ray's schema).

    Raises:
        FileNotFoundError: the config or a model file it names does not exist.
        ValueError: the YAML is not a valid Serve config.
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"serve config not found: {path} (the CPU one is serving/config.yaml)")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a Serve config is a mapping (http_options, applications), not a "
                         f"{type(cfg).__name__}")
    http = cfg.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port is not None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        http["port"] = port
    base = base or Path.cwd()
    for app in cfg.get("applications", []):
        for dep in app.get("deployments", []):
            uc = dep.get("user_config") or {}
            # the colocated layout nests the detector's settings in the ingress's: user_config.detector
            nested = [(f"{dep.get('name')}.user_config", uc)]
            if isinstance(uc.get("detector"), dict):
                nested.append((f"{dep.get('name')}.user_config.detector", uc["detector"]))
            for where, d in nested:
                for key in PATH_KEYS:
                    if d.get(key):  # an agent may join several DQN models with + (one policy on their mean Q)
                        parts = str(d[key]).split("+") if key == "agent" else [d[key]]
                        resolved = []
                        for part in parts:
                            p = Path(part) if Path(part).is_absolute() else (base / part)
                            if not p.is_file():
                                raise FileNotFoundError(f"{path}: {where}.{key} = {d[key]} not found" +
                                                        (f" ({part})" if len(parts) > 1 else ""))
                            resolved.append(str(p.resolve()))
                        d[key] = "+".join(resolved)
    try:
        ServeDeploySchema.model_validate(cfg)
    except ValidationError as e:
        raise ValueError(f"{path} is not a valid Ray Serve config: {e}") from None
    return cfg


PROXY_READY_CHECK_TIMEOUT_S = 60.0
"""Seconds a Ray instance started by ``zoomdet serve`` gives a new HTTP proxy to answer its ready check (Ray: 5)."""
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for local-only instances: ``0`` makes the node address loopback, so Ray's servers bind 127.0.0.1."""


def ray_local_only() -> bool:
    """Make a Ray instance started by this process bind loopback only; ``False`` if the switch was set otherwise
    or ``ray`` was imported before with clusters enabled (the switch is read at import), in which case Ray's
    ports stay as Ray sets them."""
    import os
    import sys

    os.environ.setdefault(RAY_LOCAL_ONLY_ENV, "0")
    if "ray" in sys.modules:
        from ray._private import ray_constants

        return not ray_constants.ENABLE_RAY_CLUSTER
    return os.environ[RAY_LOCAL_ONLY_ENV] == "0"


def _terminate(signum, frame):
    raise KeyboardInterrupt


def serve_config(path: str | Path, host: Optional[str] = None, port: Optional[int] = None, address: Optional[str] = None,
                 num_cpus: Optional[int] = None, blocking: bool = True) -> None:
    """Start (or join) Ray without its dashboard and run the resolved config through Ray Serve's ``serve run``.

    A Ray instance started here binds loopback only (see the module docstring)."""
    import os
    import signal
    import warnings

    if address is None:  # the controller of the instance started below reads it (a busy machine's proxy is slow)
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", f"{PROXY_READY_CHECK_TIMEOUT_S:g}")
    if address is None and not ray_local_only():
        warnings.warn(f"Ray's own ports will listen on all interfaces: {RAY_LOCAL_ONLY_ENV} is set to something other "
                      "than 0, or ray was imported before zoomdet serve could set it (set it to 0 before importing ray)",
                      stacklevel=2)
    import ray
    from ray.serve.scripts import run as serve_run

    # a shell's background job starts with SIGINT ignored, and SIGTERM would end the process with a
    # stack trace: both now stop the service the way Ctrl-C does (serve run shuts down cleanly on it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    cfg = resolve_config(path, host, port)
    resolved = Path(tempfile.mkdtemp(prefix="zoomdet-serve-")) / "config.resolved.yaml"
    resolved.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", num_cpus=None if address else num_cpus, include_dashboard=False)
    h = cfg.get("http_options", {})
    print(f"ZoomDet service: http://{h.get('host', '127.0.0.1')}:{h.get('port', 8000)}/docs  (resolved config {resolved})")
    serve_run.main([str(resolved), "--blocking" if blocking else "--non-blocking"], standalone_mode=False)
