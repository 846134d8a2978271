"""A decoder's new tokens against its KV cache, as a function of the bound
`Transformer` (flax calls it with `module.apply(..., method=decode)`)."""
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ntk_prefix.models import layers
from ntk_prefix.models.transformer import Transformer


def decode(self: Transformer, method_params: Any, inputs: dict, cache: dict,
           hooks: Optional[list] = None) -> tuple:
  """New tokens of a decoder against its KV cache.

  inputs: 'input_ids', 'attention_mask' [b, t] of the new tokens (the
    left-padded prompt at prefill, then one token per call), optional
    'prompt_mask' at prefill.
  cache: 'k', 'v': one [b, slots, kv_heads, head_dim] array per layer,
    'mask' [b, slots],
    'index' (the next free slot), 'count' [b] (tokens so far, soft prompt
    included: the next position).
  hooks: None at prefill, where each layer's LayerHook is computed from the
    prompt and returned; afterwards the prefill's hooks, so deep prompts
    and IAPT/LoPA prompts are computed once and NTK state enters every
    step as in training.
  Returns (logits [b, t, vocab] of the input positions, cache, hooks).
  """
  cfg, adapter = self.cfg, self.adapter
  if self.scan_layers:
    raise ValueError('decoding.decode runs unrolled layers: build the model '
                     'with scan_layers=False (and models.unstack_layers).')
  words, mask = self._embed(inputs)
  prefill = hooks is None
  n = 0
  if prefill:
    condition, instance_embedding = self._conditioning(words, mask, inputs)
    prompt = adapter.input_hook(method_params, words, instance_embedding,
                                False, None).prompt
    if prompt is not None:  # soft tokens lead the sequence in decoders
      n = prompt.shape[1]
      ones = jnp.ones((words.shape[0], n), mask.dtype)
      prompt = jnp.broadcast_to(prompt, (words.shape[0], n, cfg.hidden_size))
      words = jnp.concatenate([prompt.astype(words.dtype), words], 1)
      mask = jnp.concatenate([ones, mask], 1)
      condition = jnp.concatenate([ones, condition], 1)
  positions = (layers.positions_from_mask(mask, adapter.position_offset())
               + cache['count'][:, None])
  x = words
  if cfg.rope_theta is None:
    x = x + self.positions(positions).astype(x.dtype)
  index = cache['index']
  slot_mask = jax.lax.dynamic_update_slice(
      cache['mask'], mask.astype(cache['mask'].dtype), (0, index))
  new_k, new_v, new_hooks = [], [], []
  state = adapter.layer_state(method_params) if prefill else None
  for i, block in enumerate(self.blocks):
    hook = (adapter.layer_hook(state, i, x, condition, False, None)
            if prefill else hooks[i])
    x, kv = block(x, slot_mask, positions, hook,
                  cache={'k': cache['k'][i], 'v': cache['v'][i],
                         'index': index})
    new_k.append(kv['k'])
    new_v.append(kv['v'])
    new_hooks.append(hook)
  if cfg.pre_norm:
    x = self.final_norm(x)
  x = x[:, n:]
  logits = self.tokens.attend(x) if cfg.tie_embeddings else self.lm_head(x)
  cache = {'k': tuple(new_k), 'v': tuple(new_v), 'mask': slot_mask,
           'index': index + mask.shape[1],
           'count': cache['count'] + jnp.sum(mask, 1).astype(jnp.int32)}
  return logits, cache, new_hooks
