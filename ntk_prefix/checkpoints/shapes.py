"""Checks that a checkpoint's tensors are the model its config describes."""
from typing import Optional

import jax

from ntk_prefix import models, trees
from ntk_prefix.models.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be read into our layers."""


def check_shapes(cfg: ModelConfig, params: dict, source: str,
                 sources: Optional[dict] = None) -> None:
  """Every expected tensor is present with the shape the config implies."""
  expected = trees.flatten(jax.tree.map(lambda s: s.shape,
                                        models.param_shapes(cfg),
                                        is_leaf=lambda x: hasattr(x, 'shape')))
  found = trees.flatten(params)
  missing = sorted(set(expected) - set(found))
  if missing:
    raise CheckpointError(
        f'{source}: missing tensors for {len(missing)} parameters, e.g. '
        f'{missing[:5]}. Is the checkpoint the model its config.json says?')
  for path, shape in expected.items():
    if tuple(found[path].shape) != tuple(shape):
      name = (sources or {}).get(path, path)
      raise CheckpointError(
          f'{source}: tensor {name!r} (our {path!r}) has shape '
          f'{tuple(found[path].shape)} but config.json implies '
          f'{tuple(shape)}. The weights and the config do not belong '
          'together.')
  extra = sorted(set(found) - set(expected))
  if extra:
    raise CheckpointError(f'{source}: unexpected parameters {extra[:5]}.')
