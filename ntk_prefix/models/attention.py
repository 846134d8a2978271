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


def prefix_summary(prefix_k: Array, prefix_v: Array,
                   projection: Optional[Array] = None) -> tuple:
  """NTK-Attention's closed-form state of an explicit prefix.

  prefix_k, prefix_v: [..., m, heads, head_dim]. Returns
  Z = sum_i phi(k_i) v_i^T [..., heads, features, head_dim] and
  k = sum_i phi(k_i) [..., heads, features]: with them the NTK term equals
  attention over the prefix, exactly when phi(q).phi(k) = exp(q.k/sqrt(d)).
  """
  phi_k = feature_map(prefix_k, projection)
  z = jnp.einsum('...mhr,...mhd->...hrd', phi_k, prefix_v.astype(jnp.float32))
  return z, jnp.sum(phi_k, axis=-3)


def causal_mask(q_len: int, k_len: int) -> Array:
  """[q_len, k_len] bool; the queries are the last q_len of the k_len keys."""
  q_index = jnp.arange(q_len)[:, None] + (k_len - q_len)
  return jnp.arange(k_len)[None, :] <= q_index


# Prefixes longer than this are attended chunk by chunk with an online
# softmax, each chunk recomputed in the backward pass, so memory stays
# O(chunk x sequence) instead of O(m x sequence) (flash-attention style).
# Small chunks also keep each chunk's logits in cache: on 2 CPU cores with
# MiniLM shapes, 128-row chunks beat 256- to 4096-row chunks and the whole
# prefix, forward and backward, from m = 1024 up.
PREFIX_CHUNK = 128


def attend(q: Array, k: Array, v: Array, *, key_mask: Optional[Array],
           causal: bool, prefix_k: Optional[Array] = None,
           prefix_v: Optional[Array] = None,
           prefix_mask: Optional[Array] = None,
           ntk: Optional[NtkState] = None,
           query_key_mask: Optional[Array] = None,
           prefix_chunk: int = PREFIX_CHUNK) -> Array:
  """Attention of q over (prefix, k) plus the NTK infinite-prefix term.

  Args:
    q: [batch, q_len, heads, head_dim].
    k, v: [batch, k_len, kv_heads, head_dim]; heads % kv_heads == 0 (GQA).
    key_mask: [batch, k_len] bool, True where the key is a real token.
    causal: whether query i may only see keys up to its own position.
    prefix_k, prefix_v: [batch or 1, m, kv_heads, head_dim], always visible.
    prefix_mask: [batch or 1, m] bool, which prefix rows exist (mixed batches).
    ntk: NTK-Attention state (per query head; z [heads, r, d] or, one per
      row, [batch, heads, r, d]).
    query_key_mask: optional [batch, q_len, k_len] bool, replaces `causal`
      (used by the KV-cache decoder, whose keys are slots, not positions).
    prefix_chunk: prefixes longer than this go through the chunked path.

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f'heads={heads} is not a multiple of kv_heads={kv_heads}')
  groups = heads // kv_heads
  out_dtype = q.dtype
  # Heads-major layouts ([b, h, g, q, d]) let XLA:CPU emit plain batched
  # matmuls; the sequence-major einsums were 3x slower there.
  qg = jnp.transpose(q.astype(jnp.float32).reshape(
      batch, q_len, kv_heads, groups, head_dim), (0, 2, 3, 1, 4))

  mask = jnp.ones((batch, q_len, k.shape[1]), bool)
  if key_mask is not None:
    mask = mask & key_mask[:, None, :].astype(bool)
  if query_key_mask is not None:
    mask = mask & query_key_mask
  elif causal:
    mask = mask & causal_mask(q_len, k.shape[1])[None]
  chunked = prefix_k is not None and prefix_k.shape[1] > prefix_chunk
  if prefix_k is not None and not chunked:
    m = prefix_k.shape[1]
    prefix_k = jnp.broadcast_to(prefix_k, (batch,) + prefix_k.shape[1:])
    prefix_v = jnp.broadcast_to(prefix_v, (batch,) + prefix_v.shape[1:])
    k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=1)
    v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=1)
    pmask = (jnp.ones((batch, m), bool) if prefix_mask is None else
             jnp.broadcast_to(prefix_mask.astype(bool), (batch, m)))
    mask = jnp.concatenate(
        [jnp.broadcast_to(pmask[:, None, :], (batch, q_len, m)), mask], axis=2)

  kt = jnp.transpose(k.astype(jnp.float32), (0, 2, 1, 3))  # [b, h, k, d]
  vt = jnp.transpose(v.astype(jnp.float32), (0, 2, 1, 3))
  # [batch, kv_heads, groups, q_len, k_len]
  logits = jnp.einsum('bhgqd,bhkd->bhgqk', qg, kt)
  logits = logits / jnp.sqrt(jnp.float32(head_dim))
  logits = jnp.where(mask[:, None, None, :, :], logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1)  # [b, h, g, q]

  if chunked:
    p_max, p_den, p_num = _prefix_online(qg, prefix_k, prefix_v, prefix_mask,
                                         prefix_chunk)
    row_max = jnp.maximum(row_max, p_max)
  if ntk is not None:
    phi_q = feature_map(qg, ntk.projection)  # [b, h, g, q, r]
    if ntk.phi_mask is not None:
      mask_phi = ntk.phi_mask.astype(jnp.float32).reshape(
          batch, q_len, kv_heads, groups, -1)
      phi_q = phi_q * jnp.transpose(mask_phi, (0, 2, 3, 1, 4))
    features = phi_q.shape[-1]
    if ntk.z.ndim == 4:  # one state per row (mixed batches)
      z = ntk.z.astype(jnp.float32).reshape(batch, kv_heads, groups, features,
                                            head_dim)
      k_abs = jnp.abs(ntk.k.astype(jnp.float32)).reshape(batch, kv_heads,
                                                          groups, features)
      ntk_num = jnp.einsum('bhgqr,bhgrd->bhgqd', phi_q, z)
      ntk_den = jnp.einsum('bhgqr,bhgr->bhgq', phi_q, k_abs)
    else:
      z = ntk.z.astype(jnp.float32).reshape(kv_heads, groups, features,
                                            head_dim)
      k_abs = jnp.abs(ntk.k.astype(jnp.float32)).reshape(kv_heads, groups,
                                                          features)
      ntk_num = jnp.einsum('bhgqr,hgrd->bhgqd', phi_q, z)
      ntk_den = jnp.einsum('bhgqr,hgr->bhgq', phi_q, k_abs)  # >= 0
    # The NTK term behaves as one extra key of log-weight log(ntk_den).
    row_max = jnp.maximum(row_max, jnp.log(ntk_den))

  # The shift cancels between numerator and denominator: no gradient through
  # it (which also keeps log(0) out of the backward pass for zero-init k).
  row_max = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  weights = jnp.exp(logits - row_max[..., None])  # masked -> exp(-inf) = 0
  num = jnp.einsum('bhgqk,bhkd->bhgqd', weights, vt)
  den = jnp.sum(weights, axis=-1)
  if chunked:
    scale = jnp.exp(p_max - row_max)
    num = num + p_num * scale[..., None]
    den = den + p_den * scale
  if ntk is not None:
    # exp(-row_max) overflows once every logit of a query is below about -88;
    # a zero NTK term must then add exactly zero, not 0 * inf = NaN.
    scale = jnp.exp(-row_max)
    num = num + _times(ntk_num, scale[..., None])
    den = den + _times(ntk_den, scale)
  # A query with nothing to attend to (padding) gets zeros, not NaN.
  out = num / jnp.where(den > 0, den, 1.0)[..., None]
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads,
                                                    head_dim)
  return out.astype(out_dtype)


@jax.custom_jvp
def _times(x: Array, scale: Array) -> Array:
  """x * scale with 0 * inf = 0 (forward only: the derivative in x stays
  `scale`, so a state that starts at zero still trains)."""
  return jnp.where(x == 0, 0.0, x * scale)


@_times.defjvp
def _times_jvp(primals, tangents):
  (x, scale), (x_dot, scale_dot) = primals, tangents
  return _times(x, scale), x_dot * scale + _times(x, scale_dot)


def _prefix_online(qg: Array, prefix_k: Array, prefix_v: Array,
                   prefix_mask: Optional[Array], chunk: int) -> tuple:
  """Online-softmax attention of qg [b, h, g, q, d] over a long prefix.

  Returns (max, den, num): a running max [b, h, g, q] (no gradient) and the
  sums of exp(logit - max) and exp(logit - max) v over the prefix rows.
  """
  pb, m, kv_heads, head_dim = prefix_k.shape
  n = -(-m // chunk)
  pad = n * chunk - m
  pmask = (jnp.ones((1, m), bool) if prefix_mask is None else
           prefix_mask.astype(bool))

  def chunks(x):  # [pb, m, h, d] -> [n, pb, h, chunk, d]
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    return jnp.transpose(x.reshape(pb, n, chunk, kv_heads, head_dim),
                         (1, 0, 3, 2, 4))

  mask_chunks = jnp.transpose(jnp.pad(pmask, ((0, 0), (0, pad))).reshape(
      pmask.shape[0], n, chunk), (1, 0, 2))
  return _prefix_sums(qg, chunks(prefix_k), chunks(prefix_v), mask_chunks)


def _chunk_logits(qg, k_c, m_c):
  """[b, h, g, q, c] scaled logits of one chunk, -inf where masked."""
  scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))
  if k_c.shape[0] == 1:  # one prefix for the batch: a single larger matmul
    logits = jnp.einsum('bhgqd,hcd->bhgqc', qg, k_c[0])
  else:
    logits = jnp.einsum('bhgqd,bhcd->bhgqc', qg, k_c)
  return jnp.where(m_c[:, None, None, None, :], logits * scale, -jnp.inf)


def _rows(w, x, shared: bool):
  """sum over (b,) g, q of w [b,h,g,q,c] x [b,h,g,q,d] -> [pb, h, c, d]."""
  if shared:
    return jnp.einsum('bhgqc,bhgqd->hcd', w, x)[None]
  return jnp.einsum('bhgqc,bhgqd->bhcd', w, x)


def _apply_rows(w, rows):
  """w [b,h,g,q,c] times rows [pb, h, c, d] -> [b, h, g, q, d]."""
  if rows.shape[0] == 1:
    return jnp.einsum('bhgqc,hcd->bhgqd', w, rows[0])
  return jnp.einsum('bhgqc,bhcd->bhgqd', w, rows)


def _prefix_sums_forward(qg, k_chunks, v_chunks, mask_chunks):
  def step(carry, xs):
    run_max, den, num = carry
    k_c, v_c, m_c = xs
    logits = _chunk_logits(qg, k_c, m_c)
    new_max = jnp.maximum(run_max, jnp.max(logits, -1))
    w = jnp.exp(logits - new_max[..., None])
    decay = jnp.exp(run_max - new_max)
    return (new_max, den * decay + jnp.sum(w, -1),
            num * decay[..., None] + _apply_rows(w, v_c)), None

  # A finite start keeps exp(run_max - new_max) free of inf - inf.
  init = (jnp.full(qg.shape[:-1], -1e30, jnp.float32),
          jnp.zeros(qg.shape[:-1], jnp.float32), jnp.zeros_like(qg))
  out, _ = jax.lax.scan(step, init, (k_chunks, v_chunks, mask_chunks))
  return out


@jax.custom_vjp
def _prefix_sums(qg, k_chunks, v_chunks, mask_chunks):
  return _prefix_sums_forward(qg, k_chunks, v_chunks, mask_chunks)


def _prefix_sums_fwd(qg, k_chunks, v_chunks, mask_chunks):
  out = _prefix_sums_forward(qg, k_chunks, v_chunks, mask_chunks)
  return out, (qg, k_chunks, v_chunks, mask_chunks, out[0])


def _prefix_sums_bwd(residuals, cotangents):
  """FlashAttention-style backward: each chunk's weights are recomputed from
  the final max, so nothing of size m x q is ever stored. The max is a shift
  that cancels downstream (the caller treats it as a constant)."""
  qg, k_chunks, v_chunks, mask_chunks, final_max = residuals
  _, d_den, d_num = cotangents
  shared = k_chunks.shape[1] == 1
  scale = 1.0 / jnp.sqrt(jnp.float32(qg.shape[-1]))

  def step(d_q, xs):
    k_c, v_c, m_c = xs
    w = jnp.exp(_chunk_logits(qg, k_c, m_c) - final_max[..., None])
    d_v = _rows(w, d_num, shared)
    if shared:
      d_w = d_den[..., None] + jnp.einsum('bhgqd,hcd->bhgqc', d_num, v_c[0])
    else:
      d_w = d_den[..., None] + jnp.einsum('bhgqd,bhcd->bhgqc', d_num, v_c)
    d_logits = w * d_w * scale
    d_q = d_q + _apply_rows(d_logits, k_c)
    return d_q, (_rows(d_logits, qg, shared), d_v)

  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros_like(qg),
                                 (k_chunks, v_chunks, mask_chunks))
  return d_q, d_k, d_v, None


_prefix_sums.defvjp(_prefix_sums_fwd, _prefix_sums_bwd)
