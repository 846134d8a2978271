"""Scaled dot-product attention with the method hook: prefixes and NTK state.

Everything here is a plain function of arrays. The softmax is computed in a
log-sum-exp form that treats the NTK-Attention term as one extra "key" whose
log-weight is log(phi(q) . |k|), so it stays finite for large logits and in
bfloat16 (the official code divides by exp(max logit), which overflows).

Precision: the matmuls take q, k, v in their own dtype (bfloat16 under
`model.dtype=bfloat16`) and accumulate in float32; the softmax statistics,
phi(q), the NTK sums and the output normalisation are float32.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from ntk_prefix.models import fused, prefix_chunks
from ntk_prefix.models.features import feature_map
from ntk_prefix.models.hook_types import NtkState

Array = jax.Array
F32 = jnp.float32
mm = prefix_chunks.mm  # bf16 operands, float32 accumulation


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
           prefix_chunk: int = PREFIX_CHUNK, impl: str = 'xla') -> Array:
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
    impl: 'xla', 'cudnn', 'pallas' or 'auto' (see models/fused.py); the
      KV-cache decoder always takes the xla path.

  Returns:
    [batch, q_len, heads, head_dim] in q's dtype.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f'heads={heads} is not a multiple of kv_heads={kv_heads}')
  impl = 'xla' if query_key_mask is not None else fused.resolve(impl, q.dtype)
  chunked = (impl == 'xla' and prefix_k is not None and
             prefix_k.shape[1] > prefix_chunk)
  key_valid = (jnp.ones((batch, k.shape[1]), bool) if key_mask is None else
               key_mask.astype(bool))
  if prefix_k is not None and not chunked:
    k, v, key_valid = _prepend(k, v, key_valid, prefix_k, prefix_v,
                               prefix_mask)
  qg = _grouped(q, kv_heads)  # [b, h, g, q, d]
  terms = []  # (kind, peak, a, b); see _merge
  if impl == 'xla':
    mask = key_valid[:, None, :]
    if query_key_mask is not None:  # over the cache slots: prefix rows
      extra = k.shape[1] - query_key_mask.shape[-1]  # are always visible
      mask = mask & jnp.pad(query_key_mask, ((0, 0), (0, 0), (extra, 0)),
                            constant_values=True)
    elif causal:
      mask = mask & causal_mask(q_len, k.shape[1])[None]
    terms.append(_softmax_sums(qg, k, v, mask))
  elif ntk is None:  # the kernel's output is the answer, its gradient exact
    return fused.attention(q, k, v, key_valid, causal, impl).astype(q.dtype)
  else:
    o, lse = fused.with_lse(q, k, v, key_valid, causal, impl)
    o, lse = _grouped(o, kv_heads), _grouped(lse[..., None], kv_heads)[..., 0]
    terms.append(('shifted', lse, jnp.ones_like(lse), o.astype(F32)))
  if chunked:
    terms.append(('shifted',) + prefix_chunks.online_sums(
        qg, prefix_k, prefix_v, prefix_mask, prefix_chunk))
  if ntk is not None:
    terms.append(_ntk_sums(qg, ntk, batch))
  out = _merge(terms)  # [b, h, g, q, d]
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_len, heads,
                                                    head_dim)
  return out.astype(q.dtype)


def _grouped(x: Array, kv_heads: int) -> Array:
  """[b, q, heads, d] -> [b, kv_heads, groups, q, d]: heads-major layouts
  let XLA:CPU emit plain batched matmuls (the sequence-major einsums were
  3x slower there)."""
  b, t, heads, d = x.shape
  return jnp.transpose(x.reshape(b, t, kv_heads, heads // kv_heads, d),
                       (0, 2, 3, 1, 4))


def _prepend(k, v, key_valid, prefix_k, prefix_v, prefix_mask) -> tuple:
  """A short explicit prefix as extra key/value rows before the keys."""
  batch, m = k.shape[0], prefix_k.shape[1]
  prefix_k = jnp.broadcast_to(prefix_k, (batch,) + prefix_k.shape[1:])
  prefix_v = jnp.broadcast_to(prefix_v, (batch,) + prefix_v.shape[1:])
  rows = (jnp.ones((batch, m), bool) if prefix_mask is None else
          jnp.broadcast_to(prefix_mask.astype(bool), (batch, m)))
  return (jnp.concatenate([prefix_k.astype(k.dtype), k], axis=1),
          jnp.concatenate([prefix_v.astype(v.dtype), v], axis=1),
          jnp.concatenate([rows, key_valid], axis=1))


def _softmax_sums(qg, k, v, mask) -> tuple:
  """The keys' term: float32 logits of operands in their own dtype; the
  weights are left unshifted here (`_merge` shifts them once)."""
  kt = jnp.transpose(k, (0, 2, 1, 3))  # [b, h, k, d]
  logits = mm('bhgqd,bhkd->bhgqk', qg, kt) / jnp.sqrt(F32(qg.shape[-1]))
  logits = jnp.where(mask[:, None, None, :, :], logits, -jnp.inf)
  return ('keys', jnp.max(logits, axis=-1), logits,
          jnp.transpose(v, (0, 2, 1, 3)))


def _ntk_sums(qg, ntk: NtkState, batch: int) -> tuple:
  """NTK-Attention's term: num = phi(q) Z, den = phi(q) |k| (float32), with
  peak log(den), the log-weight of the one extra 'key' it acts as."""
  _, kv_heads, groups, q_len, head_dim = qg.shape
  phi_q = feature_map(qg, ntk.projection)  # [b, h, g, q, r]
  if ntk.phi_mask is not None:
    mask_phi = ntk.phi_mask.astype(F32).reshape(batch, q_len, kv_heads,
                                                groups, -1)
    phi_q = phi_q * jnp.transpose(mask_phi, (0, 2, 3, 1, 4))
  features = phi_q.shape[-1]
  lead = (batch,) if ntk.z.ndim == 4 else ()  # one state per row (mixed)
  z = ntk.z.astype(F32).reshape(lead + (kv_heads, groups, features, head_dim))
  k_abs = jnp.abs(ntk.k.astype(F32)).reshape(lead + (kv_heads, groups,
                                                     features, 1))
  # |k| as one more value column of Z: num and den come from one matmul
  # (one read of phi(q), one cotangent matmul back), which measured about
  # 2% of SmolLM2's step faster than a matmul and a mat-vec.
  zk = jnp.concatenate([z, k_abs], axis=-1)
  if lead:
    sums = jnp.einsum('bhgqr,bhgrd->bhgqd', phi_q, zk)
  elif 2 * q_len > head_dim:  # training (see _state_matmul)
    sums = _state_matmul(phi_q, zk)
  else:  # decoding, a few queries a row: the state once, rows folded into
    # the matmul (the copy per row made a decode step 1.5x the frozen one)
    sums = jnp.einsum('bhgqr,hgrd->bhgqd', phi_q, zk)
  num, den = sums[..., :head_dim], sums[..., head_dim]  # den >= 0
  return ('ntk', jnp.log(den), num, den)


@jax.custom_vjp
def _state_matmul(phi_q: Array, zk: Array) -> Array:
  """phi_q [b, h, g, q, r] times the state zk [h, g, r, d + 1], shared by
  every row. Forward and d phi_q run as one batched matmul with (b, h, g)
  leading over a copy of zk per row: with the state shared, XLA:CPU
  transposed phi(q) to [h, g, b*q, r] and back. Autodiff of that copy gave
  d zk as b per-row products and then a sum over b; here it is one
  contraction over (b, q) (SmolLM2 8 x 128 train step, jax.profiler: 55 ->
  17 ms per step for d zk over the 30 layers)."""
  return jnp.einsum('bhgqr,bhgrd->bhgqd', phi_q, _per_row(zk, phi_q))


def _per_row(zk: Array, phi_q: Array) -> Array:
  return jnp.broadcast_to(zk, phi_q.shape[:1] + zk.shape)


def _state_matmul_fwd(phi_q, zk):
  return _state_matmul(phi_q, zk), (phi_q, zk)


def _state_matmul_bwd(residuals, d_sums):
  phi_q, zk = residuals
  return (jnp.einsum('bhgqd,bhgrd->bhgqr', d_sums, _per_row(zk, phi_q)),
          jnp.einsum('bhgqr,bhgqd->hgrd', phi_q, d_sums))


_state_matmul.defvjp(_state_matmul_fwd, _state_matmul_bwd)


def _merge(terms: list) -> Array:
  """Normalised attention from its terms under one shift M, the largest
  peak. The shift cancels between numerator and denominator: no gradient
  through it (which also keeps log(0) out of the backward pass for a
  zero-init k). Terms: ('keys', peak, logits, values [b, h, k, d]);
  ('shifted', peak, den, num), sums already shifted by their peak; ('ntk',
  peak, num, den), unshifted sums."""
  peak = terms[0][1]
  for _, p, _, _ in terms[1:]:
    peak = jnp.maximum(peak, p)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
  num = den = 0.0
  for kind, p, a, b in terms:
    if kind == 'ntk':  # exp(-shift) overflows once every logit of a query
      # is below about -88; a zero state must then add exactly zero.
      scale = jnp.exp(-shift)
      num = num + _times(a, scale[..., None])
      den = den + _times(b, scale)
    elif kind == 'keys':
      weights = jnp.exp(a - shift[..., None])  # masked -> exp(-inf) = 0
      num = num + mm('bhgqk,bhkd->bhgqd', weights.astype(b.dtype), b)
      den = den + jnp.sum(weights, axis=-1)
    else:  # 'shifted'
      scale = jnp.exp(p - shift)
      num = num + b * scale[..., None]
      den = den + a * scale
  # A query with nothing to attend to (padding) gets zeros, not NaN.
  return num / jnp.where(den > 0, den, 1.0)[..., None]


@jax.custom_jvp
def _times(x: Array, scale: Array) -> Array:
  """x * scale with 0 * inf = 0 (forward only: the derivative in x stays
  `scale`, so a state that starts at zero still trains)."""
  return jnp.where(x == 0, 0.0, x * scale)


@_times.defjvp
def _times_jvp(primals, tangents):
  (x, scale), (x_dot, scale_dot) = primals, tangents
  return _times(x, scale), x_dot * scale + _times(x, scale_dot)
