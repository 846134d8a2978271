"""The mesh from the config, and rules from parameter names to shardings."""
import re

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ntk_prefix.compat import AxisType
from ntk_prefix.trees import flatten, unflatten


def make_mesh(mesh_config) -> jax.sharding.Mesh:
  """{'data': -1, 'model': 1} -> Mesh; -1 takes the remaining devices."""
  names = list(mesh_config.keys())
  sizes = [int(mesh_config[n]) for n in names]
  n_dev = jax.device_count()
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh={dict(zip(names, sizes))}: at most one axis may '
                     'be -1.')
  if -1 in sizes:
    if n_dev % fixed:
      raise ValueError(f'mesh={dict(zip(names, sizes))}: {n_dev} devices are '
                       f'not divisible by {fixed}.')
    sizes[sizes.index(-1)] = n_dev // fixed
  total = int(np.prod(sizes))
  if total > n_dev:
    raise ValueError(
        f'mesh={dict(zip(names, sizes))} needs {total} devices but '
        f'{n_dev} are present ({jax.devices()[0].platform}). Shrink the mesh '
        '(e.g. --config.mesh.data=-1).')
  devices = np.asarray(jax.devices()[:total]).reshape(sizes)
  return jax.sharding.Mesh(devices, tuple(names),
                           axis_types=(AxisType.Auto,) * len(names))


def _spec(text: str, shape, mesh) -> P:
  axes = [a.strip() or None for a in text.split(',')] if text else []
  axes = (axes + [None] * len(shape))[:len(shape)]
  for i, a in enumerate(axes):  # fall back to replicated where it won't split
    if a is not None and shape[i] % mesh.shape[a]:
      axes[i] = None
  return P(*axes)


def frozen_shardings(params, rules, mesh):
  """Tree of NamedSharding for the frozen params from (regex, spec) rules."""
  compiled = [(re.compile(r), s) for r, s in rules]
  out = {}
  for path, leaf in flatten(params).items():
    spec = next((s for r, s in compiled if r.fullmatch(path)), '')
    out[path] = NamedSharding(mesh, _spec(spec, np.shape(leaf), mesh))
  return unflatten(out)


def check_batch(batch_size: int, mesh, field: str = 'batch_size') -> None:
  data = mesh.shape.get('data', 1)
  if batch_size % data:
    raise ValueError(f'{field}={batch_size} is not divisible by the mesh '
                     f'data axis ({data} devices). Use a multiple of {data}.')
