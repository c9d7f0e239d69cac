"""The device mesh for training: ("fsdp", "tp") over every device, or none on a single CPU.

Why no mesh on one device: a `jax.make_mesh` with explicit axis types broke Tunix's
trainers, and a 1 x 1 mesh buys nothing there; Tunix runs unsharded when no mesh is active.
"""

from __future__ import annotations

import logging

from curation.config import MeshConfig

logger = logging.getLogger(__name__)

AXES = ("fsdp", "tp")


def shape(config: MeshConfig, device_count: int) -> tuple[int, int]:
    """(fsdp, tp) for this many devices; ValueError naming both when they do not multiply out."""
    fsdp = config.fsdp if config.fsdp is not None else device_count // config.tp
    if fsdp < 1 or fsdp * config.tp != device_count:
        raise ValueError(f"mesh fsdp={config.fsdp} x tp={config.tp} must use all {device_count} devices "
                         f"(fsdp * tp == {device_count}); set mesh.fsdp and mesh.tp accordingly")
    return fsdp, config.tp


def create(config: MeshConfig):
    """A jax Mesh with axes ("fsdp", "tp"), or None on one CPU device (no sharding needed)."""
    import jax
    from tunix.utils import mesh as tunix_mesh

    devices = jax.devices()
    fsdp, tp = shape(config, len(devices))
    if fsdp * tp == 1 and devices[0].platform == "cpu":
        return None
    logger.info("device mesh fsdp=%d x tp=%d over %d %s devices", fsdp, tp, len(devices), devices[0].platform)
    return tunix_mesh.create_mesh((fsdp, tp), AXES, devices=devices)


def single_device():
    """A 1 x 1 mesh on the first device: for APIs that require a mesh object (Tunix's RLCluster)."""
    import jax
    import numpy as np

    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), AXES, axis_types=auto)
