"""The layers as one scanned block over stacked parameters
(`model.scan_layers`): compile time stays flat in depth, numbers equal the
unrolled layers'."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix.models import layers
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.hook_types import NO_LAYER_HOOK, Adapter


class _LayerStep(nn.Module):
  """One layer as a scan step: the method's hook for layer `index` (a traced
  index: methods index their per-layer state with it), then the block."""
  cfg: ModelConfig
  adapter: Adapter
  remat: str
  impl: str

  @nn.compact
  def __call__(self, x, index, mask, positions, method_params, condition,
               train, rng):
    hook = NO_LAYER_HOOK
    if method_params is not None:
      layer_rng = None if rng is None else jax.random.fold_in(rng, index)
      hook = self.adapter.layer_hook(method_params, index, x, condition, train,
                                     layer_rng)
    block = layers.maybe_remat(layers.Block, self.remat)
    return block(self.cfg, self.impl, name='block')(x, mask, positions,
                                                     hook), None


def scanned_blocks(cfg: ModelConfig, adapter: Adapter, remat: str,
                   impl: str) -> nn.Module:
  step = nn.scan(_LayerStep, variable_axes={'params': 0},
                 split_rngs={'params': True},
                 in_axes=(0,) + (nn.broadcast,) * 6, length=cfg.num_layers)
  return step(cfg, adapter, remat, impl, name='layers')


def stack_layers(params: dict, num_layers: int) -> dict:
  """{'layer_0': p0, ...} -> {'layers': {'block': stacked}} (scan_layers);
  NumPy leaves stay on the host."""
  if 'layers' in params:
    return params
  params = dict(params)
  per_layer = [params.pop(f'layer_{i}') for i in range(num_layers)]
  stack = lambda *a: (np.stack(a) if isinstance(a[0], np.ndarray) else
                      jnp.stack(a))
  params['layers'] = {'block': jax.tree.map(stack, *per_layer)}
  return params


def unstack_layers(params: dict) -> dict:
  """The inverse of `stack_layers`."""
  if 'layers' not in params:
    return params
  params = dict(params)
  stacked = params.pop('layers')['block']
  for i in range(jax.tree.leaves(stacked)[0].shape[0]):
    params[f'layer_{i}'] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return params
