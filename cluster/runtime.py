"""Connecting a render job to Ray.

* Already connected (a test session, a notebook, ``ray job submit``'s driver after it called
  ``ray.init``): use that connection, leave it open.
* No address: ``ray.init()``. With ``RAY_ADDRESS`` set (as under ``ray job submit``) that joins
  the cluster; otherwise it starts an embedded local Ray for the job, shut down afterwards.
* An address (``auto``, ``host:6379``, ``ray://host:10001``): join that cluster; only this
  driver's connection is closed afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mastering.errors import LacquerError


class ClusterConnectionError(LacquerError):
    """Ray could not be started or joined."""


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_gpus: int | None = None, num_cpus: int | None = None
) -> Iterator[None]:
    """Connect for the duration of the ``with`` block (see the module docstring).

    Args:
        address: cluster to join; ``None``: embedded local Ray (or ``RAY_ADDRESS``).
        num_gpus, num_cpus: resources of an embedded local Ray (``num_gpus`` on a machine
            without CUDA gives *logical* GPUs: workers run on CPU); ignored when joining.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # "local": always a new instance (plain ray.init() would join any cluster already
        # running on this machine).
        address = "local"
        kwargs.update(num_gpus=num_gpus, num_cpus=num_cpus)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address if address != "local" else "an embedded local Ray"
        where = where or os.environ.get("RAY_ADDRESS", "")
        raise ClusterConnectionError(f"cannot connect to {where}: {exc}") from None
    try:
        yield
    finally:
        ray.shutdown()
