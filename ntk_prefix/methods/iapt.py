"""IAPT (Zhu et al. 2024, arXiv 2405.18203): instruction-aware soft prompts.

No official code is public; from the paper's text (section 3.2):
- In each layer l a generator reads that layer's input hidden states of the
  instruction tokens (`condition_mask`: never the answer, so a decoder cannot
  peek at its targets) and produces `num_tokens` soft tokens.
- Generator (the paper's, `generator='paper'`): down-projection of every
  instruction token (hidden -> bottleneck), self-attention pooling with one
  learned query per soft token (softmax over the instruction tokens), the
  learned rational activation, and one up-projection (bottleneck -> hidden)
  shared by the soft tokens.
- `generator='pool_first'` (this codebase before 2026-11): one attention pool
  over the hidden states, then down-projection, activation and an
  up-projection to num_tokens * hidden. Kept so the two can be compared.
- Rational activation: P(x) / (1 + |Q(x)|) with P of degree 5 and Q of degree
  4 without constant term ("safe" Pade units, Molina et al. 2020), learned per
  layer and initialised to the identity (P = x, Q = 0).
- The tokens are inserted at layer l's input and dropped after it (the
  paper's per-layer replacement). Through the layer's frozen norm and
  key/value projections this is a prefix of keys/values: `prefix_hidden`.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import LayerHook


@dataclasses.dataclass(frozen=True)
class Options:
  num_tokens: int = 4
  bottleneck: int = 32
  init_std: float = 0.02
  dropout: float = 0.0
  generator: str = 'paper'  # or 'pool_first' (see the module docstring)


def rational(x, num, den):
  """P(x) / (1 + |Q(x)|); num [6] (x^0..x^5), den [4] (x^1..x^4)."""
  p = sum(num[i] * x ** i for i in range(6))
  q = sum(den[i] * x ** (i + 1) for i in range(4))
  return p / (1.0 + jnp.abs(q))


@dataclasses.dataclass(frozen=True)
class Iapt(base.Method):
  name = 'iapt'
  layer_stacked = True
  per_example = True  # reads each example's instruction
  order = 50  # place in tables and listings
  lr_grid = (3e-4, 1e-3, 3e-3, 1e-2)
  decoder_lr_grid = (1e-4, 3e-4, 1e-3, 3e-3)  # one step lower on the decoder
  Options = Options
  # No official code is public: the paper's structure is the default.
  presets = {'paper': base.Preset(
      {'generator': 'paper', 'num_tokens': 4},
      source='Zhu et al. 2024 (arXiv 2405.18203) section 3.2: four soft '
      'tokens per layer from down-projection, self-attention pooling, a '
      'learned rational activation and up-projection.',
      differs='The paper gives no bottleneck width or initialisation; ours: '
      'bottleneck 32, init_std 0.02.')}
  # The pooling query is a vector per layer; num/den are the rational
  # activation's coefficients (decay would pull it off the identity).
  no_decay = ('pool_query', 'num', 'den')

  def validate(self):
    o, m = self.opts, self.model
    base.require(o.num_tokens > 0, self.field('num_tokens'), o.num_tokens,
                 'a positive number of soft tokens')
    base.require(0 < o.bottleneck <= m.hidden_size, self.field('bottleneck'),
                 o.bottleneck, f'1..hidden_size={m.hidden_size}')
    base.require(o.generator in ('paper', 'pool_first'),
                 self.field('generator'), o.generator,
                 "'paper' or 'pool_first'")

  def init(self, rng, frozen_params=None, tokenizer=None):
    o, m = self.opts, self.model
    L, d, r, n = m.num_layers, m.hidden_size, o.bottleneck, o.num_tokens
    kq, kd, ku = jax.random.split(rng, 3)
    identity = jnp.zeros((L, 6)).at[:, 1].set(1.0)
    shared = {'down': jax.random.normal(kd, (L, d, r)) / jnp.sqrt(d),
              'down_bias': jnp.zeros((L, r)), 'num': identity,
              'den': jnp.zeros((L, 4))}
    if o.generator == 'paper':  # one query per soft token, shared up-proj.
      return {**shared,
              'pool_query': o.init_std * jax.random.normal(kq, (L, n, r)),
              'up': o.init_std * jax.random.normal(ku, (L, r, d)),
              'up_bias': jnp.zeros((L, d))}
    return {**shared,
            'pool_query': o.init_std * jax.random.normal(kq, (L, d)),
            'up': o.init_std * jax.random.normal(ku, (L, r, n * d)),
            'up_bias': jnp.zeros((L, n * d))}

  def layer_hook(self, method_params, layer, hidden, mask, train, rng):
    p = {k: v[layer] for k, v in method_params.items()}
    o = self.opts
    h = hidden.astype(jnp.float32)  # [b, t, d]
    valid = (mask > 0)[:, None, :]  # [b, 1, t]: instruction tokens only
    if o.generator == 'paper':
      x = h @ p['down'] + p['down_bias']  # [b, t, r]
      scores = jnp.einsum('btr,nr->bnt', x, p['pool_query']) / jnp.sqrt(
          jnp.float32(x.shape[-1]))
      weights = jax.nn.softmax(jnp.where(valid, scores, -1e30), -1)
      pooled = jnp.einsum('bnt,btr->bnr', weights, x)  # [b, n, r]
      pooled = self.dropout(pooled, o.dropout, train, rng)
      z = rational(pooled, p['num'], p['den'])
      return LayerHook(prefix_hidden=z @ p['up'] + p['up_bias'])
    scores = jnp.einsum('btd,d->bt', h, p['pool_query']) / jnp.sqrt(
        jnp.float32(h.shape[-1]))
    weights = jax.nn.softmax(jnp.where(valid[:, 0], scores, -1e30), -1)
    pooled = jnp.einsum('bt,btd->bd', weights, h)
    pooled = self.dropout(pooled, o.dropout, train, rng)
    z = rational(pooled @ p['down'] + p['down_bias'], p['num'], p['den'])
    tokens = (z @ p['up'] + p['up_bias']).reshape(h.shape[0], o.num_tokens,
                                                  h.shape[-1])
    return LayerHook(prefix_hidden=tokens)
