"""Several processes, one run: start-up, which rows are this process's, and
who writes.

Every process runs the same program over the same global batches; each
reads only the rows its devices hold (`local_rows`) and assembles the global
array with `jax.make_array_from_process_local_data`. Process 0 alone writes
the run's files; orbax checkpoints are written by all together.
"""
import os

import jax
import numpy as np


def initialize() -> None:
  """jax.distributed.initialize() when asked (NTK_PREFIX_MULTIHOST=1).

  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (set by
  `python -m ntk_prefix.launch`, or by hand) are passed on; without them JAX
  finds the cluster itself (TPU metadata, SLURM). CPU processes talk through
  gloo collectives.
  """
  if not os.environ.get('NTK_PREFIX_MULTIHOST'):
    return
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  if address:
    jax.distributed.initialize(address,
                               int(os.environ['JAX_NUM_PROCESSES']),
                               int(os.environ['JAX_PROCESS_ID']))
  else:
    jax.distributed.initialize()


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def local_rows(sharding, n: int) -> slice:
  """The rows of a global batch of `n` rows that this process's devices
  hold under `sharding` (sharded on axis 0), as one contiguous slice."""
  if jax.process_count() == 1:
    return slice(0, n)
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map((n,)).values():
    starts.append(index[0].start or 0)
    stops.append(n if index[0].stop is None else index[0].stop)
  start, stop = min(starts), max(stops)
  if sum(b - a for a, b in set(zip(starts, stops))) != stop - start:
    raise ValueError('this process\'s devices do not hold one contiguous '
                     'block of the batch; order the mesh by process.')
  return slice(start, stop)


def global_batch(local: dict, sharding, n: int) -> dict:
  """Arrays of this process's rows -> global arrays of `n` rows."""
  if jax.process_count() == 1:
    return local
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (n,) + np.shape(v)[1:])
          for k, v in local.items()}


def fetch(tree):
  """Host NumPy values of replicated arrays, read from this process's own
  copy (jax.device_get needs every shard addressable)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)
