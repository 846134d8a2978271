"""Prompt tuning (Lester et al. 2021): soft tokens at the input embeddings.

They follow [CLS] in encoders and lead the sequence in decoders (the model
decides; see `models/transformer.py`).
"""
import dataclasses

import jax
import jax.numpy as jnp

from ntk_prefix.methods import base
from ntk_prefix.models.hooks import InputHook


@dataclasses.dataclass(frozen=True)
class Options:
  length: int = 10
  # 'vocab': embeddings of random vocabulary tokens; 'text': of init_text;
  # 'normal': init_std * N(0, 1).
  init: str = 'vocab'
  init_text: str = 'classify the sentiment of this sentence'
  init_std: float = 0.02


@dataclasses.dataclass(frozen=True)
class PromptTuning(base.Method):
  name = 'prompt_tuning'
  order = 30  # place in tables and listings
  lr_grid = (3e-3, 1e-2, 3e-2, 1e-1)
  peft_peer = ('PROMPT_TUNING', {'num_virtual_tokens': 20}, {'length': 20})
  mixable = True
  Options = Options

  def validate(self):
    o, m = self.opts, self.model
    base.require(o.length > 0, self.field('length'), o.length,
                 'a positive number of soft tokens')
    base.require(m.rope_theta is not None or m.is_vision or o.length < m.max_input_tokens,
                 self.field('length'), o.length,
                 f'fewer than the {m.max_input_tokens} positions of the model')
    base.require(o.init in ('vocab', 'text', 'normal'), self.field('init'),
                 o.init, "'vocab', 'text' or 'normal'")
    base.require(o.init == 'normal' or not m.is_vision, self.field('init'),
                 o.init, "'normal' for vision models (no vocabulary)")

  def init(self, rng, frozen_params=None, tokenizer=None):
    o, m = self.opts, self.model
    if o.init == 'normal':
      return {'prompt': o.init_std * jax.random.normal(
          rng, (o.length, m.hidden_size))}
    if frozen_params is None:
      raise base.MethodError(f'{self.field("init")}={o.init!r} needs the '
                             'frozen embeddings.')
    table = jnp.asarray(frozen_params['tokens']['embedding'])
    if o.init == 'vocab':
      ids = jax.random.randint(rng, (o.length,), 0, min(5000, m.vocab_size))
    else:
      if tokenizer is None:
        raise base.MethodError("init='text' needs the tokenizer.")
      tokens = tokenizer(o.init_text, add_special_tokens=False)['input_ids']
      ids = jnp.asarray((tokens * (o.length // max(len(tokens), 1) + 1))
                        [:o.length])
    return {'prompt': table[ids].astype(jnp.float32)}

  def input_hook(self, method_params, embeddings, instance_embedding, train,
                 rng):
    return InputHook(prompt=method_params['prompt'][None])
