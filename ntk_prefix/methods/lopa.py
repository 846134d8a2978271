"""LoPA (Jain et al. 2024): a low-rank, instance-dependent soft prompt.

From the frozen backbone's own first pass, e(x) (first token for encoders,
last instruction token for decoders); two heads (dropout -> Linear(h_e, h) ->
tanh -> Linear) give u [m, r] and v [d, r]; Z_I = u v^T; the prompt
Z = Z_S * sigmoid(Z_I) (or the paper's ablations 'add', 'concat', 'max')
with a shared trainable Z_S [m, d], prepended at the input embeddings.
"""
import dataclasses

import jax
import jax.numpy as jnp

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import InputHook


@dataclasses.dataclass(frozen=True)
class Options:
  length: int = 10  # m
  rank: int = 4  # r
  hidden: int = 256  # h
  dropout: float = 0.1
  combine: str = 'gate'  # 'gate', 'add', 'concat', 'max'
  init_std: float = 0.02


def _mlp_init(rng, n_in, n_hidden, n_out):
  k1, k2 = jax.random.split(rng)
  return {'w1': jax.random.normal(k1, (n_in, n_hidden)) / jnp.sqrt(n_in),
          'b1': jnp.zeros((n_hidden,)),
          'w2': jax.random.normal(k2, (n_hidden, n_out)) / jnp.sqrt(n_hidden),
          'b2': jnp.zeros((n_out,))}


@dataclasses.dataclass(frozen=True)
class Lopa(base.Method):
  name = 'lopa'
  Options = Options

  def validate(self):
    o, m = self.opts, self.model
    base.require(o.length > 0, self.field('length'), o.length,
                 'a positive prompt length')
    base.require(0 < o.rank <= min(o.length, m.hidden_size),
                 self.field('rank'), o.rank,
                 f'1..min(length, hidden_size) = 1..'
                 f'{min(o.length, m.hidden_size)}')
    base.require(o.combine in ('gate', 'add', 'concat', 'max'),
                 self.field('combine'), o.combine,
                 "'gate', 'add', 'concat' or 'max'")
    n = o.length * (2 if o.combine == 'concat' else 1)
    base.require(m.rope_theta is not None or m.is_vision or n < m.max_input_tokens,
                 self.field('length'), o.length,
                 f'a prompt shorter than the {m.max_input_tokens} positions')

  def init(self, rng, frozen_params=None, tokenizer=None):
    o, d = self.opts, self.model.hidden_size
    ks, ku, kv = jax.random.split(rng, 3)
    return {'z_s': o.init_std * jax.random.normal(ks, (o.length, d)),
            'u': _mlp_init(ku, d, o.hidden, o.length * o.rank),
            'v': _mlp_init(kv, d, o.hidden, d * o.rank)}

  def _head(self, p, e, train, rng):
    e = self.dropout(e, self.opts.dropout, train, rng)
    return jnp.tanh(e @ p['w1'] + p['b1']) @ p['w2'] + p['b2']

  def input_hook(self, method_params, embeddings, instance_embedding, train,
                 rng):
    o, d = self.opts, self.model.hidden_size
    e = instance_embedding().astype(jnp.float32)  # [b, h_e]
    ru, rv = (None, None) if rng is None else jax.random.split(rng)
    u = self._head(method_params['u'], e, train, ru).reshape(-1, o.length,
                                                              o.rank)
    v = self._head(method_params['v'], e, train, rv).reshape(-1, d, o.rank)
    z_i = jnp.einsum('bmr,bdr->bmd', u, v)
    z_s = method_params['z_s'][None]
    if o.combine == 'gate':
      prompt = z_s * jax.nn.sigmoid(z_i)
    elif o.combine == 'add':
      prompt = z_s + z_i
    elif o.combine == 'max':
      prompt = jnp.maximum(z_s, z_i)
    else:
      prompt = jnp.concatenate([jnp.broadcast_to(z_s, z_i.shape), z_i], 1)
    return InputHook(prompt=prompt)
