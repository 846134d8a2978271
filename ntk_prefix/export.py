"""A method state on its own: safetensors plus a JSON description.

`save` writes method_state.safetensors and method.json (method, options,
base model and its dimensions); `load` reads them back onto a base model and
refuses one of other dimensions with a clear error.
"""
import dataclasses
import json
import os

import jax
import numpy as np

from ntk_prefix import atomic, distributed, methods
from ntk_prefix.trees import flatten, unflatten


def save(directory: str, method, method_params, model_path: str = '',
         head=None) -> None:
  """The method state and, for a classifier, its task head (stored as
  'head/...' tensors beside the method's)."""
  from safetensors.numpy import save_file
  tree = dict(distributed.fetch(method_params))
  if head is not None:
    tree['head'] = distributed.fetch(head)
  flat = {k: np.asarray(v, np.float32) for k, v in flatten(tree).items()}
  desc = {'method': method.name, 'options': dataclasses.asdict(method.opts),
          'base_model': model_path or method.model.name,
          'dimensions': method.model.dimensions()}
  with atomic.replace_dir(directory) as tmp:  # never half old, half new
    save_file(flat, os.path.join(tmp, 'method_state.safetensors'))
    atomic.write_json(os.path.join(tmp, 'method.json'), desc)


def load(directory: str, model_cfg, frozen_params=None):
  """-> (method, method_params) for the base model `model_cfg` (a saved task
  head is read by `load_head`)."""
  with open(os.path.join(directory, 'method.json')) as f:
    desc = json.load(f)
  dims = model_cfg.dimensions()
  if desc['dimensions'] != dims:
    diff = {k: (desc['dimensions'].get(k), v) for k, v in dims.items()
            if desc['dimensions'].get(k) != v}
    raise methods.MethodError(
        f'{directory}: the {desc["method"]} state was trained on '
        f'{desc["base_model"]}; (saved, this model) differ in {diff}. Load it '
        'onto the base model it was trained on.')
  method = methods.get(desc['method'], model_cfg, desc['options'])
  params = _tensors(directory)
  params.pop('head', None)
  method.check_params(params, frozen_params)
  return method, params


def load_head(directory: str):
  """The task head saved with a method state, or None."""
  return _tensors(directory).get('head')


def _tensors(directory: str) -> dict:
  from safetensors.numpy import load_file
  return jax.tree.map(jax.numpy.asarray, unflatten(load_file(
      os.path.join(directory, 'method_state.safetensors'))))
