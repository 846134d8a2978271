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
  """One layer as a scan step: the method's hook for layer `index`, then the
  block. `layer_state` is the adapter's (Adapter.layer_state): a stacked one
  arrives as this layer's slice, handed to the hook as a one-layer stack (so
  its gradient is stacked by the scan, not padded per layer); any other is
  whole, indexed by the traced `index`."""
  cfg: ModelConfig
  adapter: Adapter
  remat: str
  impl: str

  @nn.compact
  def __call__(self, x, index, layer_state, mask, positions, condition,
               train, rng):
    hook = NO_LAYER_HOOK
    if layer_state is not None:
      layer_rng = None if rng is None else jax.random.fold_in(rng, index)
      if self.adapter.layer_stacked:
        layer_state, index = jax.tree.map(lambda a: a[None], layer_state), 0
      hook = self.adapter.layer_hook(layer_state, index, x, condition, train,
                                     layer_rng)
    block = layers.maybe_remat(layers.Block, self.remat)
    return block(self.cfg, self.impl, name='block')(x, mask, positions,
                                                     hook), None


def scanned_blocks(cfg: ModelConfig, adapter: Adapter, remat: str,
                   impl: str) -> nn.Module:
  state_axis = 0 if adapter.layer_stacked else nn.broadcast
  step = nn.scan(_LayerStep, variable_axes={'params': 0},
                 split_rngs={'params': True},
                 in_axes=(0, state_axis) + (nn.broadcast,) * 5,
                 length=cfg.num_layers)
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
