"""Transformer building blocks as Flax linen modules, applied functionally.

Modules hold no state: parameters come in through `Module.apply`, and the
method's contribution comes in as an explicit `LayerHook` argument.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_prefix.models import attention, precision
from ntk_prefix.models.config import ModelConfig
from ntk_prefix.models.hook_types import LayerHook

Array = jax.Array

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'silu': jax.nn.silu,
}


class RMSNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) +
                              self.eps)
    return (x32 * scale).astype(x.dtype)


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
  if cfg.norm == 'rms':
    return RMSNorm(cfg.norm_eps, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, name=name)


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding, HF 'rotate_half' layout. x: [b, t, heads, head_dim]."""
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) /
                              head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
  # cos and sin at half width, then doubled: XLA:CPU evaluates them once per
  # call. Taken after the doubling, they were fused into every reader of q
  # and k and evaluated per head and element as scalar calls (SmolLM2's
  # phi(q) fusion: 153 -> 11 ms a forward).
  cos, sin = (jnp.concatenate([f(angles)] * 2, -1)[:, :, None, :]
              for f in (jnp.cos, jnp.sin))
  # rotate_half as a concatenate: a flip here (reverse) kept XLA:CPU from
  # vectorising the fusions that read it, exp in phi(q) included (15x slower).
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], -1)
  return (x * cos + rotated * sin).astype(x.dtype)


def dense(features: int, use_bias: bool, name: str) -> nn.Dense:
  """nn.Dense with float32 accumulation of 16-bit operands."""
  return nn.Dense(features, use_bias=use_bias, name=name,
                  dot_general=precision.dot_general)


class Projection(nn.Module):
  """Dense layer that adds the method's low-rank delta when it has one."""
  features: int
  use_bias: bool

  @nn.compact
  def __call__(self, x, lora=None):
    y = dense(self.features, self.use_bias, 'dense')(x)
    if lora is not None:  # x [b, t, in], a [in, r], b [r, out]
      low = precision.einsum('bti,ir->btr', x, lora.a).astype(x.dtype)
      y = y + (lora.scale * precision.einsum('btr,ro->bto', low,
                                             lora.b)).astype(y.dtype)
    return y


class SelfAttention(nn.Module):
  cfg: ModelConfig
  impl: str = 'xla'  # models/fused.py

  @nn.compact
  def __call__(self, x, key_mask, positions, hook: LayerHook, normed_prefix,
               cache: Optional[dict] = None):
    """Returns the output, or (output, {'k', 'v'}) when decoding with a
    cache: {'k', 'v' [b, slots, kv_heads, head_dim], 'index': first slot of
    x}; key_mask then covers the slots (already including x's)."""
    cfg = self.cfg
    lora = hook.lora or {}
    b, t, _ = x.shape
    heads, kv_heads, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    query = Projection(heads * hd, cfg.attn_bias, name='query')
    key = Projection(kv_heads * hd, cfg.attn_bias, name='key')
    value = Projection(kv_heads * hd, cfg.attn_bias, name='value')
    q = query(x, lora.get('query')).reshape(b, t, heads, hd)
    k = key(x, lora.get('key')).reshape(b, t, kv_heads, hd)
    v = value(x, lora.get('value')).reshape(b, t, kv_heads, hd)
    if cfg.rope_theta is not None:
      q = rope(q, positions, cfg.rope_theta)
      k = rope(k, positions, cfg.rope_theta)
    prefix_k, prefix_v = hook.prefix_k, hook.prefix_v
    if normed_prefix is not None:  # hidden tokens inserted at this layer
      n = normed_prefix.shape[1]
      pb = normed_prefix.shape[0]
      pk = key(normed_prefix, lora.get('key')).reshape(pb, n, kv_heads, hd)
      pv = value(normed_prefix, lora.get('value')).reshape(pb, n, kv_heads, hd)
      prefix_k = pk if prefix_k is None else jnp.concatenate(
          [jnp.broadcast_to(prefix_k, (max(pb, prefix_k.shape[0]),) +
                            prefix_k.shape[1:]), pk], 1)
      prefix_v = pv if prefix_v is None else jnp.concatenate(
          [jnp.broadcast_to(prefix_v, (max(pb, prefix_v.shape[0]),) +
                            prefix_v.shape[1:]), pv], 1)
    query_key_mask = None
    if key_mask.ndim == 3:  # packed rows: [b, t, t] (packed_mask)
      query_key_mask, key_mask = key_mask, None
    if cache is not None:  # write this step's keys/values into their slots
      index = cache['index']
      k = jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype),
                                       (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype),
                                       (0, index, 0, 0))
      # Slots are in time order: query i (slot index + i) sees slots <= it.
      query_key_mask = (jnp.arange(k.shape[1])[None, :] <=
                        (index + jnp.arange(t))[:, None])[None]
    out = attention.attend(q, k, v, key_mask=key_mask, causal=cfg.causal,
                           prefix_k=prefix_k, prefix_v=prefix_v, ntk=hook.ntk,
                           query_key_mask=query_key_mask, impl=self.impl)
    out = Projection(cfg.hidden_size, cfg.attn_bias, name='out')(
        out.reshape(b, t, heads * hd), lora.get('out'))
    return out if cache is None else (out, {'k': k, 'v': v})


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    act = ACTIVATIONS[cfg.activation]
    up = dense(cfg.intermediate_size, cfg.mlp_bias, 'up')(x)
    if cfg.gated_mlp:
      gate = dense(cfg.intermediate_size, cfg.mlp_bias, 'gate')(x)
      h = act(gate) * up
    else:
      h = act(up)
    return dense(cfg.hidden_size, cfg.mlp_bias, 'down')(h)


class Block(nn.Module):
  """One transformer layer: pre-norm (GPT-2, LLaMA, ViT) or post-norm (BERT)."""
  cfg: ModelConfig
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x, key_mask, positions, hook: LayerHook,
               cache: Optional[dict] = None):
    """x, or (x, new cache) when given a KV cache (see SelfAttention)."""
    cfg = self.cfg
    new_cache = None

    def attend(h, prefix):
      nonlocal new_cache
      out = attn(h, key_mask, positions, hook, prefix, cache)
      if cache is not None:
        out, new_cache = out
      return out

    attn = SelfAttention(cfg, self.impl, name='attn')
    attn_norm = make_norm(cfg, 'attn_norm')
    mlp_norm = make_norm(cfg, 'mlp_norm')
    prefix_hidden = hook.prefix_hidden
    if prefix_hidden is not None:
      prefix_hidden = prefix_hidden.astype(x.dtype)
    if cfg.pre_norm:
      normed_prefix = None if prefix_hidden is None else attn_norm(
          prefix_hidden)
      x = x + attend(attn_norm(x), normed_prefix)
      x = x + Mlp(cfg, name='mlp')(mlp_norm(x))
    else:
      x = attn_norm(x + attend(x, prefix_hidden))
      x = mlp_norm(x + Mlp(cfg, name='mlp')(x))
    return x if cache is None else (x, new_cache)


def positions_from_mask(key_mask: Array, offset: int = 0) -> Array:
  """Position of each token: count of real tokens before it (left padding ok)."""
  key_mask = key_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0) + offset


def packed_mask(segments: Array) -> Array:
  """[b, t, t] bool for packed rows (data/packing.py): a query sees the
  earlier keys of its own segment and the shared ones (segment < 0: soft
  prompt tokens every example of the row reads), never padding (0)."""
  t = segments.shape[1]
  q, k = segments[:, :, None], segments[:, None, :]
  causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
  return ((q == k) | (k < 0)) & (k != 0) & causal[None]


def packed_positions(segments: Array, offset: int = 0) -> Array:
  """Each token's position in its own example, after the shared tokens,
  as `positions_from_mask` gives the example alone in its row."""
  t = segments.shape[1]
  index = jnp.arange(t)[None, :]
  starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool),
                            segments[:, 1:] != segments[:, :-1]], 1)
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  shared = jnp.sum(segments < 0, axis=1, keepdims=True)
  positions = index - first + jnp.where(segments > 0, shared, 0)
  return jnp.where(segments != 0, positions, 0) + offset


def check_length(cfg: ModelConfig, total_tokens: int, what: str) -> None:
  """Static check: no silent wrap-around of the position table."""
  if cfg.rope_theta is None and total_tokens > cfg.max_input_tokens:
    raise ValueError(
        f'{what} needs {total_tokens} positions but {cfg.name or cfg.family} '
        f'has max_position_embeddings allowing {cfg.max_input_tokens}. '
        'Shorten the input (data.max_length, with data.truncate=True) or the '
        'prefix/prompt length.')


def maybe_remat(module_cls, policy: Optional[str]):
  if not policy:
    return module_cls
  policies = {
      'full': None,
      'dots': jax.checkpoint_policies.checkpoint_dots,
      'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }
  if policy not in policies:
    raise ValueError(f'remat policy {policy!r}; expected one of '
                     f'{sorted(policies)} or empty for none.')
  return nn.remat(module_cls, policy=policies[policy])
