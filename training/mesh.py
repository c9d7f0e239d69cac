"""The device mesh for training: ("fsdp", "tp") over every device, on one host or a TPU pod.

The same Mesh object places the weights while they are read (`models.registry.load(mesh=)`)
and runs the trainers, so Tunix never re-places a model: RLCluster would otherwise log
"Resharding model from None to Mesh", copy the weights, and the GRPO reference would no
longer share the actor's backbone. Axis types are Auto (`tunix.utils.mesh.create_mesh`): a
`jax.make_mesh` with explicit axis types breaks Tunix's trainers. One device gets a 1 x 1
mesh: the placement then costs nothing and the code path is the one a pod runs.

`mesh.multihost: true` (a TPU pod: one process per host) calls `jax.distributed.initialize()`
before any device is touched; each process then sees every device of the pod.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from machinery.config import MeshConfig

logger = logging.getLogger(__name__)

AXES = ("fsdp", "tp")


def shape(config: MeshConfig, device_count: int) -> tuple[int, int]:
    """(fsdp, tp) for this many devices; ValueError naming both when they do not multiply out."""
    fsdp = config.fsdp if config.fsdp is not None else device_count // config.tp
    if fsdp < 1 or fsdp * config.tp != device_count:
        raise ValueError(f"mesh fsdp={config.fsdp} x tp={config.tp} must use all {device_count} devices "
                         f"(fsdp * tp == {device_count}); set mesh.fsdp and mesh.tp accordingly")
    return fsdp, config.tp


def start(config: MeshConfig, *, initialize: Callable[[], None] | None = None) -> None:
    """On a pod (`mesh.multihost`), join the other hosts once: `initialize` defaults to jax.distributed's."""
    import jax

    if not config.multihost or jax.distributed.is_initialized():
        return
    logger.info("mesh.multihost: jax.distributed.initialize() (one process per host)")
    (initialize or jax.distributed.initialize)()


def create(config: MeshConfig, *, initialize: Callable[[], None] | None = None):
    """A jax Mesh with Auto axes ("fsdp", "tp") over every device of every host."""
    import jax
    from tunix.utils import mesh as tunix_mesh

    start(config, initialize=initialize)
    devices = jax.devices()
    fsdp, tp = shape(config, len(devices))
    if len(devices) > 1:
        logger.info("device mesh fsdp=%d x tp=%d over %d %s devices (%d processes)", fsdp, tp, len(devices),
                    devices[0].platform, jax.process_count())
    # No explicit device list: jax.make_mesh orders the devices by the TPU topology.
    return tunix_mesh.create_mesh((fsdp, tp), AXES)


def is_primary() -> bool:
    """Whether this process writes shared files (process 0; always true on one host)."""
    import jax

    return jax.process_index() == 0
