"""LoRA (Hu et al. 2021) on the attention projections, as a baseline.

y = x W + (alpha / rank) * (x A) B with B = 0 at init (exactly the frozen
model), A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT's default.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import LayerHook, LoraDelta

TARGETS = ('query', 'key', 'value', 'out')


@dataclasses.dataclass(frozen=True)
class Options:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple = ('query', 'value')


@dataclasses.dataclass(frozen=True)
class Lora(base.Method):
  name = 'lora'
  layer_stacked = True
  order = 60  # place in tables and listings
  weight_space = True
  lr_grid = (3e-4, 1e-3, 3e-3, 1e-2)
  decoder_lr_grid = (1e-4, 3e-4, 1e-3, 3e-3)  # one step lower on the decoder
  peft_type = 'LORA'
  peft_imports = True
  peft_peer = ('LORA', {'r': 8, 'lora_alpha': 16, 'lora_dropout': 0.0,
                        'target_modules': ['q_proj', 'v_proj']},
               {'rank': 8, 'alpha': 16.0, 'targets': ('query', 'value')})
  Options = Options

  def dims(self, target):
    m = self.model
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    return {'query': (m.hidden_size, q), 'key': (m.hidden_size, kv),
            'value': (m.hidden_size, kv), 'out': (q, m.hidden_size)}[target]

  def validate(self):
    o = self.opts
    base.require(bool(o.targets) and all(t in TARGETS for t in o.targets),
                 self.field('targets'), o.targets,
                 f'a non-empty subset of {TARGETS}')
    smallest = min(min(self.dims(t)) for t in o.targets)
    base.require(0 < o.rank <= smallest, self.field('rank'), o.rank,
                 f'1..{smallest} (the smallest dimension of the targets)')

  def init(self, rng, frozen_params=None, tokenizer=None):
    L, r = self.model.num_layers, self.opts.rank
    params = {}
    for target, key in zip(self.opts.targets,
                           jax.random.split(rng, len(self.opts.targets))):
      n_in, n_out = self.dims(target)
      bound = 1.0 / jnp.sqrt(n_in)
      params[target] = {
          'a': jax.random.uniform(key, (L, n_in, r), minval=-bound,
                                  maxval=bound),
          'b': jnp.zeros((L, r, n_out))}
    return params

  def layer_hook(self, method_params, layer, hidden, mask, train, rng):
    scale = self.opts.alpha / self.opts.rank
    return LayerHook(lora={
        t: LoraDelta(a=method_params[t]['a'][layer],
                     b=method_params[t]['b'][layer], scale=scale)
        for t in self.opts.targets})
