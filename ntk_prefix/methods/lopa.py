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
  hidden: int = 256  # h; 0: the model's hidden size
  dropout: float = 0.1
  combine: str = 'gate'  # 'gate', 'add', 'concat', 'max'
  init_std: float = 0.02  # Z_S ~ init_std * N(0, 1)
  head_init_std: float = 0.0  # head weights; 0: 1 / sqrt(fan_in)


PRESETS = {
    'official': base.Preset(
        {'init_std': 1.0, 'head_init_std': 0.02, 'hidden': 0,
         'dropout': 0.1},
        source='jabhinav/Prompt-Tuning-Strikes-Back-with-LOPA@56357be custom_peft/tuners/prompt_tuning.py:116 Z_S '
        'is an nn.Embedding, N(0, 1); utils/model.py:92-93 MLP width = the '
        'encoder\'s hidden size; :88, :96, :101 dropout hidden_dropout_prob '
        '(0.1 for BERT-style encoders); :107-115 head weights '
        'N(0, initializer_range=0.02), output biases 0.',
        differs='The first Linear\'s bias keeps PyTorch\'s uniform init '
        'there; it starts at 0 here. The official encoder is a separate '
        'model (e.g. CodeBERT); here e(x) is the frozen backbone\'s own '
        'first pass.'),
}


def _mlp_init(rng, n_in, n_hidden, n_out, std=0.0):
  k1, k2 = jax.random.split(rng)
  s1 = std or 1 / jnp.sqrt(n_in)
  s2 = std or 1 / jnp.sqrt(n_hidden)
  return {'w1': s1 * jax.random.normal(k1, (n_in, n_hidden)),
          'b1': jnp.zeros((n_hidden,)),
          'w2': s2 * jax.random.normal(k2, (n_hidden, n_out)),
          'b2': jnp.zeros((n_out,))}


@dataclasses.dataclass(frozen=True)
class Lopa(base.Method):
  name = 'lopa'
  per_example = True  # reads each example's instruction
  order = 40  # place in tables and listings
  lr_grid = (3e-4, 1e-3, 3e-3, 1e-2)
  decoder_lr_grid = (1e-4, 3e-4, 1e-3, 3e-3)  # one step lower on the decoder
  Options = Options
  presets = PRESETS

  def validate(self):
    o, m = self.opts, self.model
    base.require(o.length > 0, self.field('length'), o.length,
                 'a positive prompt length')
    base.require(o.hidden >= 0, self.field('hidden'), o.hidden,
                 'a width >= 0 (0: the hidden size)')
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
    h = o.hidden or d
    ks, ku, kv = jax.random.split(rng, 3)
    return {'z_s': o.init_std * jax.random.normal(ks, (o.length, d)),
            'u': _mlp_init(ku, d, h, o.length * o.rank, o.head_init_std),
            'v': _mlp_init(kv, d, h, d * o.rank, o.head_init_std)}

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
