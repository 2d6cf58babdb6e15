"""Starting or joining Ray the same way everywhere."""

from __future__ import annotations

import os

import ray
from ray._private import ray_constants

# Ray binds to the primary interface even for an embedded instance; this pins
# every Ray process started from here to 127.0.0.1, so a laptop run sends no
# traffic off the machine.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_ray(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start an embedded Ray on loopback.

    ``address="local"`` is passed explicitly for the embedded case: a bare
    ``ray.init()`` would silently join any cluster a ``ray start`` left behind.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(log_to_driver=not quiet, include_dashboard=False)
    if address is None:
        os.environ.update(LOOPBACK_ENV)  # the Ray processes started from here
        # This process read the flag when it imported ray; without this its
        # node address (handed to the raylet) would still be the primary one.
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)
