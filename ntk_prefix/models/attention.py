"""Scaled dot-product attention with the method hook: prefixes and NTK state.

Everything here is a plain function of arrays. The softmax is computed in a
log-sum-exp form that treats the NTK-Attention term as one extra "key" whose
log-weight is log(phi(q) . |k|), so it stays finite for large logits and in
bfloat16 (the official code divides by exp(max logit), which overflows).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from ntk_prefix.models.hooks import NtkState

Array = jax.Array


def feature_map(x: Array, projection: Optional[Array] = None) -> Array:
  """phi(x) over the last axis (head_dim), computed in float32.

  projection None: the paper's phi(x) = elu(x / d**0.25) + 1, features = d.
  projection [r, d]: positive random features (Performer), whose inner
  products are unbiased estimates of exp(q.k / sqrt(d)); error ~ 1/sqrt(r).
  """
  x = x.astype(jnp.float32)
  d = x.shape[-1]
  x = x / d ** 0.25
  if projection is None:
    return jax.nn.elu(x) + 1.0
  r = projection.shape[0]
  proj = jnp.einsum('...d,rd->...r', x, projection.astype(jnp.float32))
  return jnp.exp(proj - 0.5 * jnp.sum(x * x, -1, keepdims=True)) / jnp.sqrt(
      jnp.float32(r))


def causal_mask(q_len: int, k_len: int) -> Array:
  """[q_len, k_len] bool; the queries are the last q_len of the k_len keys."""
  q_index = jnp.arange(q_len)[:, None] + (k_len - q_len)
  return jnp.arange(k_len)[None, :] <= q_index


def attend(q: Array, k: Array, v: Array, *, key_mask: Optional[Array],
           causal: bool, prefix_k: Optional[Array] = None,
           prefix_v: Optional[Array] = None,
           prefix_mask: Optional[Array] = None,
           ntk: Optional[NtkState] = None,
           query_key_mask: Optional[Array] = None) -> Array:
  """Attention of q over (prefix, k) plus the NTK infinite-prefix term.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, k_len, kv_heads, head_dim]; heads % kv_heads == 0 (GQA).
    key_mask: [batch, k_len] bool, True where the key is a real token.
    causal: whether query i may only see keys up to its own position.
    prefix_k, prefix_v: [batch or 1, m, kv_heads, head_dim], always visible.
    prefix_mask: [batch or 1, m] bool, which prefix rows exist (mixed batches).
    ntk: NTK-Attention state (per query head).
    query_key_mask: optional [batch, q_len, k_len] bool, replaces `causal`
      (used by the KV-cache decoder, whose keys are slots, not positions).

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f'heads={heads} is not a multiple of kv_heads={kv_heads}')
  groups = heads // kv_heads
  out_dtype = q.dtype
  q32 = q.astype(jnp.float32)
  qg = q32.reshape(batch, q_len, kv_heads, groups, head_dim)

  mask = jnp.ones((batch, q_len, k.shape[1]), bool)
  if key_mask is not None:
    mask = mask & key_mask[:, None, :].astype(bool)
  if query_key_mask is not None:
    mask = mask & query_key_mask
  elif causal:
    mask = mask & causal_mask(q_len, k.shape[1])[None]
  if prefix_k is not None:
    m = prefix_k.shape[1]
    prefix_k = jnp.broadcast_to(prefix_k, (batch,) + prefix_k.shape[1:])
    prefix_v = jnp.broadcast_to(prefix_v, (batch,) + prefix_v.shape[1:])
    k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=1)
    v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=1)
    pmask = (jnp.ones((batch, m), bool) if prefix_mask is None else
             jnp.broadcast_to(prefix_mask.astype(bool), (batch, m)))
    mask = jnp.concatenate(
        [jnp.broadcast_to(pmask[:, None, :], (batch, q_len, m)), mask], axis=2)

  # [batch, kv_heads, groups, q_len, k_len]
  logits = jnp.einsum('bqhgd,bkhd->bhgqk', qg, k.astype(jnp.float32))
  logits = logits / jnp.sqrt(jnp.float32(head_dim))
  mask = mask[:, None, None, :, :]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1)  # [b, h, g, q]

  if ntk is not None:
    phi_q = feature_map(qg, ntk.projection)  # [b, q, h, g, r]
    if ntk.phi_mask is not None:
      phi_q = phi_q * ntk.phi_mask.astype(jnp.float32).reshape(phi_q.shape)
    features = phi_q.shape[-1]
    z = ntk.z.astype(jnp.float32).reshape(kv_heads, groups, features, head_dim)
    k_abs = jnp.abs(ntk.k.astype(jnp.float32)).reshape(kv_heads, groups,
                                                        features)
    ntk_num = jnp.einsum('bqhgr,hgrd->bhgqd', phi_q, z)
    ntk_den = jnp.einsum('bqhgr,hgr->bhgq', phi_q, k_abs)  # >= 0
    # The NTK term behaves as one extra key of log-weight log(ntk_den).
    row_max = jnp.maximum(row_max, jnp.log(ntk_den))

  # The shift cancels between numerator and denominator: no gradient through
  # it (which also keeps log(0) out of the backward pass for zero-init k).
  row_max = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(logits - row_max[..., None])  # masked -> exp(-inf) = 0
  num = jnp.einsum('bhgqk,bkhd->bhgqd', weights, v.astype(jnp.float32))
  den = jnp.sum(weights, axis=-1)
  if ntk is not None:
    scale = jnp.exp(-row_max)
    num = num + ntk_num * scale[..., None]
    den = den + ntk_den * scale
  # A query with nothing to attend to (padding) gets zeros, not NaN.
  out = num / jnp.where(den > 0, den, 1.0)[..., None]
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads,
                                                    head_dim)
  return out.astype(out_dtype)
