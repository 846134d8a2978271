"""P-Tuning v2 (Liu et al. 2022): trainable key/value prefixes in every layer.

The state is the materialised prefix itself, which is also what Prefix-Tuning
exports for inference. Like THUDM/P-tuning-v2 (and HF `past_key_values`),
input positions start after the prefix unless shift_positions=False.
"""
import dataclasses

import jax

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import LayerHook


@dataclasses.dataclass(frozen=True)
class Options:
  length: int = 10
  init: str = 'normal'  # or 'words': keys/values of init_text
  init_std: float = 0.02
  init_text: str = 'classify the sentiment'
  dropout: float = 0.0  # on the prefix keys/values while training
  shift_positions: bool = True


PRESETS = {
    'official': base.Preset(
        {'dropout': 0.1},
        per_task={'rte': {'length': 20}, 'boolq': {'length': 40}},
        source='THUDM/P-tuning-v2@b1520c9 model/sequence_classification.py:107, :141 '
        'Dropout(hidden_dropout_prob) on the prefix keys/values; '
        'run_script/run_rte_bert.sh:7-8 dropout=0.1, psl=20; '
        'run_script/run_boolq_bert.sh:7-8 psl=40 (the BERT scripts: our '
        'encoder is a BERT). The prefix starts N(0, 0.02): the class '
        '(:101-128) never re-initialises its nn.Embedding, so from_pretrained '
        'gives the missing weights BERT\'s _init_weights, '
        'N(0, initializer_range=0.02), our init_std.',
        differs='There is no script for CB or SST-2: the length stays ours '
        '(10) there. The scripts\' hidden_dropout_prob also sets the '
        'backbone\'s dropout; our frozen backbone runs without dropout.'),
}


def validate_prefix(method: base.Method) -> None:
  """Checks shared by the explicit-prefix methods."""
  o, m = method.opts, method.model
  base.require(o.length > 0, method.field('length'), o.length,
               'a positive prefix length (for the frozen model use '
               "method.name='none')")
  if o.shift_positions and m.rope_theta is None and not m.is_vision:
    base.require(o.length < m.max_input_tokens, method.field('length'),
                 o.length, f'shift_positions uses {o.length} of the '
                 f'{m.max_input_tokens} positions of {m.name or m.family}; '
                 'use a shorter prefix or shift_positions=False')
  base.require(0.0 <= o.dropout < 1.0, method.field('dropout'), o.dropout,
               'a rate in [0, 1)')


def prefix_hook(method, k, v, layer, train, rng) -> LayerHook:
  """The LayerHook of a [layers, m, kv_heads, head_dim] prefix."""
  k, v = k[layer][None], v[layer][None]
  if train and method.opts.dropout and rng is not None:
    rk, rv = jax.random.split(rng)
    k = method.dropout(k, method.opts.dropout, train, rk)
    v = method.dropout(v, method.opts.dropout, train, rv)
  return LayerHook(prefix_k=k, prefix_v=v)


@dataclasses.dataclass(frozen=True)
class PTuningV2(base.Method):
  name = 'p_tuning_v2'
  layer_stacked = True
  order = 20  # place in tables and listings
  lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)
  mixable = True
  peft_type = 'PREFIX_TUNING'
  peft_imports = True
  peft_peer = ('PREFIX_TUNING', {'num_virtual_tokens': 20}, {'length': 20})
  presets = PRESETS
  prefix_length_option = 'length'

  def explicit_prefix(self, method_params):
    return {'k': method_params['k'], 'v': method_params['v']}
  Options = Options

  def validate(self):
    validate_prefix(self)
    base.require(self.opts.init in ('normal', 'words'), self.field('init'),
                 self.opts.init, "'normal' or 'words'")

  def position_offset(self):
    return self.opts.length if self.opts.shift_positions else 0

  def init(self, rng, frozen_params=None, tokenizer=None):
    m = self.model
    shape = (m.num_layers, self.opts.length, m.num_kv_heads, m.head_dim)
    if self.opts.init == 'words':
      k, v = base.word_prefix(m, frozen_params, tokenizer, self.opts.init_text,
                              self.opts.length)
      return {'k': k, 'v': v}
    kk, kv = jax.random.split(rng)
    return {'k': self.opts.init_std * jax.random.normal(kk, shape),
            'v': self.opts.init_std * jax.random.normal(kv, shape)}

  def layer_hook(self, method_params, layer, hidden, mask, train, rng):
    return prefix_hook(self, method_params['k'], method_params['v'], layer,
                       train, rng)
