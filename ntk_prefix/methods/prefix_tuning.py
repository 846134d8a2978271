"""Prefix-Tuning (Li & Liang 2021): per-layer key/value prefixes of length m
produced by an MLP reparameterisation while training,

  Embedding(m, hidden) -> Linear(hidden, mlp_hidden) -> tanh
                       -> Linear(mlp_hidden, layers * 2 * kv_heads * head_dim),

and materialised to plain per-layer keys/values (`materialize`, the P-Tuning
v2 state) for inference and export. Each layer's prefix is sized from the
model's kv_heads and head_dim, so grouped-query models get the right shapes.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax

from ntk_prefix.methods import base
from ntk_prefix.methods.p_tuning_v2 import prefix_hook, validate_prefix


@dataclasses.dataclass(frozen=True)
class Options:
  length: int = 10
  mlp_hidden: int = 512
  # 'random', or 'words': fit the MLP so its output equals the frozen model's
  # keys/values of init_text (Li & Liang's real-word initialisation).
  init: str = 'random'
  init_text: str = 'summarize'
  init_fit_steps: int = 300
  init_fit_lr: float = 1e-2  # Adam's rate for the 'words' fit
  dropout: float = 0.0
  shift_positions: bool = True


# length=0 in a preset: the init text's token count (needs the tokenizer).
PRESETS = {
    'official': base.Preset(
        {'init': 'words', 'init_fit_steps': 500, 'init_fit_lr': 1e-4,
         'length': 0, 'mlp_hidden': 512},
        source='XiangLi1999/PrefixTuning@6519d30 gpt2/train_control.py:99-112 the real-word (low-data) '
        'initialisation: prefix length = the init text\'s token count, an '
        'Embedding -> Linear(n_embd, mid_dim) -> Tanh -> Linear MLP, mid_dim '
        '512 (:68-71); '
        ':193-212 lowdata_init_train3: Adam lr 1e-4 for 500 steps on the MSE '
        'between the MLP\'s output and the frozen model\'s past_key_values '
        'of the init text.',
        differs='The init text is ours (method.prefix_tuning.init_text); the '
        'paper chose one per task.',
        needs_tokenizer=True),
}


@dataclasses.dataclass(frozen=True)
class PrefixTuning(base.Method):
  name = 'prefix_tuning'
  order = 10  # place in tables and listings
  # The MLP reparameterisation moves the prefix fast: at 1e-3 the prefix
  # takes over and SST-2 stays at chance (measured); Li & Liang use 5e-5.
  lr_grid = (3e-5, 1e-4, 3e-4, 1e-3)
  # PEFT's prefix tuning with prefix_projection is Li & Liang's MLP reparam.
  peft_peer = ('PREFIX_TUNING', {'num_virtual_tokens': 20,
                                 'prefix_projection': True,
                                 'encoder_hidden_size': 512},
               {'length': 20, 'mlp_hidden': 512})
  mixable = True
  layer_stacked = True  # of layer_state, the materialised prefix
  peft_type = 'PREFIX_TUNING'
  Options = Options
  presets = PRESETS
  prefix_length_option = 'length'

  def explicit_prefix(self, method_params):
    return self.materialize(method_params)

  @classmethod
  def resolve_options(cls, opts, tokenizer):
    if opts.length != 0:
      return opts
    if tokenizer is None or opts.init != 'words':
      raise base.MethodError(
          'method.prefix_tuning.length=0 means the init text\'s token count; '
          "it needs init='words' and the model's tokenizer.")
    ids = tokenizer(opts.init_text, add_special_tokens=False)['input_ids']
    return dataclasses.replace(opts, length=len(ids))

  def validate(self):
    validate_prefix(self)
    base.require(self.opts.mlp_hidden > 0, self.field('mlp_hidden'),
                 self.opts.mlp_hidden, 'a positive width')
    base.require(self.opts.init in ('random', 'words'), self.field('init'),
                 self.opts.init, "'random' or 'words'")

  def position_offset(self):
    return self.opts.length if self.opts.shift_positions else 0

  def _random_init(self, rng):
    m, h = self.model, self.opts.mlp_hidden
    out = m.num_layers * 2 * m.num_kv_heads * m.head_dim
    k0, k1, k2 = jax.random.split(rng, 3)
    return {
        'embedding': jax.random.normal(k0, (self.opts.length, m.hidden_size)),
        'w1': jax.random.normal(k1, (m.hidden_size, h)) / jnp.sqrt(
            m.hidden_size),
        'b1': jnp.zeros((h,)),
        'w2': 0.02 * jax.random.normal(k2, (h, out)),
        'b2': jnp.zeros((out,)),
    }

  def state_shapes(self, frozen_params=None):
    # The word init fits the random init's arrays: same shapes, no tokenizer.
    return jax.eval_shape(self._random_init, jax.random.PRNGKey(0))

  def init(self, rng, frozen_params=None, tokenizer=None):
    params = self._random_init(rng)
    if self.opts.init == 'random':
      return params
    k, v = base.word_prefix(self.model, frozen_params, tokenizer,
                            self.opts.init_text, self.opts.length)
    return self.fit(params, k, v, self.opts.init_fit_steps,
                    self.opts.init_fit_lr)

  def fit(self, params, k, v, steps, lr=1e-2):
    """Adam on || materialize(params) - (k, v) ||^2."""
    opt = optax.adam(lr)

    def loss(p):
      mat = self.materialize(p)
      return jnp.mean((mat['k'] - k) ** 2) + jnp.mean((mat['v'] - v) ** 2)

    @jax.jit
    def step(p, s):
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(steps):
      params, state = step(params, state)
    return params

  def materialize(self, method_params) -> dict:
    """{'k', 'v'}: [layers, m, kv_heads, head_dim] each."""
    m = self.model
    p = method_params
    h = jnp.tanh(p['embedding'] @ p['w1'] + p['b1'])
    out = (h @ p['w2'] + p['b2']).reshape(self.opts.length, m.num_layers, 2,
                                          m.num_kv_heads, m.head_dim)
    out = jnp.transpose(out, (2, 1, 0, 3, 4))
    return {'k': out[0], 'v': out[1]}

  def layer_state(self, method_params):
    """The prefix, materialised once per forward pass. Materialised in each
    layer's hook instead, the forward was shared but autodiff gave every
    layer a full-size w2 gradient from its slice and summed them: on
    SmolLM2, 30 x 17.7M floats, and 4.47 s of kernel time a step (batch 3 x
    192) against 2.77 s (`python -m benchmarks.profile
    --method=prefix_tuning`)."""
    return self.materialize(method_params)

  def layer_hook(self, layer_state, layer, hidden, mask, train, rng):
    return prefix_hook(self, layer_state['k'], layer_state['v'], layer,
                       train, rng)
