"""Ray for the jobs that fan out over images: rollout caches (``zoomdet cache build``) and ``zoomdet detect``.

One place decides which Ray instance a job uses (an existing cluster, the one this process already runs, or a
local one of ``workers`` CPUs started for the job and shut down after it) and runs its tasks, reporting each as it
finishes. Only the instance a job started is shut down.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

__all__ = ["ray_session", "run_tasks"]


@contextmanager
def ray_session(workers: int = 0, address: Optional[str] = None) -> Iterator[Any]:
    """The ``ray`` module, initialised for a job: ``address`` (e.g. ``auto``, ``ray://head:10001``), else the
    instance already running in this process, else a local, dashboard-less one of ``workers`` CPUs (0: all).
    A local instance started here is shut down on exit, whatever happened."""
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_tasks(ray, fn: Callable, calls: Sequence[tuple], num_cpus: float = 1,
              num_gpus: float = 0) -> Iterator[tuple[int, Any]]:
    """Run ``fn(*args)`` as one Ray task per ``args`` of ``calls`` (``num_cpus`` / ``num_gpus`` each); yield
    ``(index into calls, result)`` as each task finishes, in the order they finish."""
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    pending = {task.remote(*args): k for k, args in enumerate(calls)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done[0]), ray.get(done[0])
