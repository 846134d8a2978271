"""What the frozen model computes inside, for methods that start from it."""
from typing import Any

import jax.numpy as jnp

from ntk_prefix.models import layers
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.transformer import Transformer


def layer_key_values(cfg: ModelConfig, frozen_params: Any,
                     inputs: dict) -> list:
  """The frozen model's per-layer keys/values for `inputs` (post-RoPE):
  [(k, v)] per layer, each [batch, t, kv_heads, head_dim]. Methods use it
  to initialise prefixes from the activations of real words."""
  module = Transformer(cfg, lm_logits=False)
  _, state = module.apply(
      {'params': frozen_params}, {}, inputs,
      capture_intermediates=lambda mdl, _: mdl.name in ('key', 'value'))
  inter = state['intermediates']
  mask = jnp.asarray(inputs['attention_mask'])
  positions = Transformer(cfg).bind({'params': frozen_params}).position_ids(
      mask, 0)
  out = []
  for i in range(cfg.num_layers):
    attn = inter[f'layer_{i}']['attn']
    shape = mask.shape + (cfg.num_kv_heads, cfg.head_dim)
    k = attn['key']['__call__'][0].reshape(shape)
    v = attn['value']['__call__'][0].reshape(shape)
    if cfg.rope_theta is not None:
      k = layers.rope(k, positions, cfg.rope_theta)
    out.append((k, v))
  return out
