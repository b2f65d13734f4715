"""The device mesh from config, and multi-host start-up (jax.distributed)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh

from emo_jax.config import ConfigError, ParallelConfig

AXES = ("data", "fsdp", "tensor")


def axis_sizes(cfg: ParallelConfig, device_count: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; one axis may be -1 (the devices the others leave)."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"parallel: axis sizes {sizes}: positive, at most one -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if free:
        if device_count % known:
            raise ConfigError(f"parallel: {device_count} devices do not split into {sizes}")
        sizes[free[0]] = device_count // known
    if int(np.prod(sizes)) != device_count:
        raise ConfigError(
            f"parallel: mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"{device_count} available"
        )
    return tuple(sizes)


def make_mesh(cfg: ParallelConfig, devices: list | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all, every process's)."""
    devices = jax.devices() if devices is None else devices
    sizes = axis_sizes(cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)  # XLA propagates shardings inside jit
    return jax.make_mesh(sizes, AXES, axis_types=auto, devices=devices)


def generation_mesh(devices: int, rows: int, frames: int) -> Mesh | None:
    """The mesh of generation on this process's first `devices` devices (None for one): a
    guided clip of `rows` rows (guidance passes) and `frames` frames is split with its rows
    over "data" (the most devices that divide both) and its frames over "fsdp" (the rest)."""
    local = jax.local_devices()
    if devices < 1:
        raise ConfigError(f"devices: {devices}: at least 1")
    if devices > len(local):
        raise ConfigError(
            f"devices: {devices} asked for, {len(local)} {local[0].platform} device(s) available"
        )
    if devices == 1:
        return None
    data = math.gcd(devices, rows)
    if frames % (devices // data):
        raise ConfigError(
            f"devices: {devices} devices do not split a clip of {rows} guidance passes x "
            f"{frames} frames (the passes over {data}, the frames over {devices // data})"
        )
    return make_mesh(ParallelConfig(data=data, fsdp=devices // data), local[:devices])


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _wants_distributed(cfg: ParallelConfig) -> bool:
    """Asked for, or a multi-process launch that JAX can auto-detect (Slurm, MPI, TPU pod)."""
    if cfg.distributed is not None:
        return cfg.distributed
    if cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    tasks = max(_env_int("SLURM_NTASKS") or 1, _env_int("OMPI_COMM_WORLD_SIZE") or 1)
    return tasks > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(cfg: ParallelConfig) -> bool:
    """Starts jax.distributed if the config, the flags or the environment ask for it.

    Explicit values (config / flags, else JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID) win; anything unset is auto-detected by JAX (Slurm, Open MPI, Cloud TPU).
    CPU processes talk through gloo collectives. Returns True if it initialised.
    """
    if not _wants_distributed(cfg) or jax.distributed.is_initialized():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=cfg.num_processes or _env_int("JAX_NUM_PROCESSES"),
        process_id=cfg.process_id if cfg.process_id is not None else _env_int("JAX_PROCESS_ID"),
    )
    return True
