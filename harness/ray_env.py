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


def remove_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creating actor has died; return their ids (hex).

    A placement group lives as long as the job, not the actor that created it.
    A Ray Train controller that dies abnormally (its node lost, a controller
    error) leaves its workers' group behind: Train's own cleaner needs the
    dashboard's state API and may have died on the same node. Left alone, such
    a group keeps its CPUs/GPUs until the study ends and can starve every later
    trial. Groups created by the driver itself (Tune's trial groups) are kept.
    """
    from ray._private import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    accessor = state.state._global_state_accessor
    live = {gcs_pb2.PlacementGroupTableData.CREATED, gcs_pb2.PlacementGroupTableData.PENDING,
            gcs_pb2.PlacementGroupTableData.PREPARED, gcs_pb2.PlacementGroupTableData.RESCHEDULING}
    removed = []
    for pg_hex in state.state.placement_group_table():
        pg_id = ray.PlacementGroupID(bytes.fromhex(pg_hex))
        raw = accessor.get_placement_group_info(pg_id)
        if raw is None:
            continue
        data = gcs_pb2.PlacementGroupTableData.FromString(raw)
        made_by_actor = data.creator_actor_id and data.creator_actor_id != b"\xff" * len(data.creator_actor_id)
        if (data.state in live and made_by_actor and data.creator_actor_dead and not data.is_detached
                and data.creator_job_id.hex() == job):
            remove_placement_group(PlacementGroup(pg_id))
            removed.append(pg_hex)
    return removed
