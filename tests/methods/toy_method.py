"""A method in one file, outside the package: registered by naming this
module in $NTK_PREFIX_METHODS (tests/methods/test_plugin.py). A learned gate per
layer and value feature, zero at init: v <- v + x (W_v diag(g)) in LoRA form
with a fixed identity-like factor, so the frozen model is unchanged at init.
"""
import dataclasses

import jax.numpy as jnp

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import LayerHook, LoraDelta


@dataclasses.dataclass(frozen=True)
class Options:
  width: int = 4  # hidden features the gate reads


@dataclasses.dataclass(frozen=True)
class ToyGate(base.Method):
  name = 'toy_gate'
  order = 65
  lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)
  Options = Options

  def validate(self):
    base.require(0 < self.opts.width <= self.model.hidden_size,
                 self.field('width'), self.opts.width,
                 f'1..{self.model.hidden_size}')

  def init(self, rng, frozen_params=None, tokenizer=None):
    m = self.model
    return {'gate': jnp.zeros((m.num_layers, self.opts.width,
                               m.num_kv_heads * m.head_dim))}

  def layer_hook(self, method_params, layer, hidden, mask, train, rng):
    read = jnp.eye(self.model.hidden_size, self.opts.width)  # first features
    return LayerHook(lora={'value': LoraDelta(
        a=read, b=method_params['gate'][layer], scale=1.0)})
