"""Data parallelism over one device mesh, on one host or many (``jax.sharding``).

The caller (the sweep, the train loop) builds a 1-D :func:`make_mesh` over a ``'data'`` axis,
replicates parameters and scalars with :func:`replicate` and shards every batch along its first
axis with :func:`shard_batch`; the jitted steps themselves are unchanged, XLA partitions them and
adds the cross-device sums. With several processes (``jax.distributed``) each process loads only
its slice of every global batch (``mtajax.data.pipeline.Loader``) and :func:`shard_batch`
assembles the global array from the slices; only :func:`is_writer` (process 0) writes files.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

DATA = "data"


def initialize(config: ml_collections.ConfigDict) -> None:
  """Starts ``jax.distributed`` when ``config.distributed.enabled`` (before any JAX computation).

  Unset ``coordinator_address`` / ``num_processes`` / ``process_id`` are detected by JAX on TPU
  pods, SLURM and Open MPI. On CPU, ``config.distributed.cpu_collectives`` ('gloo' or 'mpi')
  selects the cross-process collectives.
  """
  d = config.distributed
  if not d.enabled or jax.distributed.is_initialized():
    return
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  jax.distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=d.num_processes, process_id=d.process_id)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``'data'`` mesh over ``num_devices`` devices (None: all), equally many per process."""
  processes, total = jax.process_count(), jax.device_count()
  n = total if num_devices is None else num_devices
  if not 1 <= n <= total or n % processes:
    raise ValueError(f"config.mesh = {num_devices} devices: need a multiple of the process count "
                     f"{processes} between 1 and the {total} devices (None = all).")
  per_process = n // processes
  devices = []
  for p in range(processes):
    local = sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
    devices += local[:per_process]
  return Mesh(np.array(devices), (DATA,))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` with every leaf copied to all devices of ``mesh`` (same value on every process)."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if (isinstance(x, jax.Array) and x.is_fully_addressable
        and x.sharding.is_equivalent_to(sharding, x.ndim)):
      # Relabelled, not kept: a jitted step's outputs carry ``sharding`` itself, and inputs on an
      # equivalent but different sharding (one device's SingleDeviceSharding) compile it again.
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def placed_like(x: jax.Array, like: jax.Array) -> jax.Array:
  """``x`` on the sharding of ``like`` (relabelled where equivalent): a jitted function then sees
  the same input shardings and reuses its program."""
  return x if x.sharding == like.sharding else jax.device_put(x, like.sharding)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """The global batch from this process's slice, split along axis 0 over the ``'data'`` axis.

  A batch whose local size does not divide over the local devices (the short last batch of an
  evaluation split) is gathered whole onto every device instead: same numbers, no speed-up.
  """
  local_devices = len(mesh.local_devices)
  size = len(next(iter(batch.values())))
  if size % local_devices == 0:
    sharding = NamedSharding(mesh, P(DATA))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}
  batch = {k: np.asarray(v) for k, v in batch.items()}
  if jax.process_count() > 1:
    batch = multihost_utils.process_allgather(batch, tiled=True)
  return replicate(batch, mesh)


def to_host(tree: Any) -> Any:
  """NumPy copies of the leaves of ``tree``, gathered across processes where needed."""
  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def is_writer() -> bool:
  """Whether this process writes results, reports, logs and checkpoint metadata (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
