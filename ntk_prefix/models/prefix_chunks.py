"""Attention over a long explicit prefix, chunk by chunk (flash style).

The prefix is cut into chunks of rows attended with an online softmax; the
backward pass recomputes each chunk from the final row max, so memory stays
O(chunk x sequence) instead of O(m x sequence). Operands keep their dtype
(bfloat16 under the mixed-precision policy); sums accumulate in float32.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from ntk_prefix.models import precision

Array = jax.Array
F32 = jnp.float32


mm = precision.einsum  # a's dtype in, float32 out

def online_sums(qg: Array, prefix_k: Array, prefix_v: Array,
                prefix_mask: Optional[Array], chunk: int) -> tuple:
  """Online-softmax attention of qg [b, h, g, q, d] over a long prefix.

  Returns (max, den, num), float32: a running max [b, h, g, q] (no gradient)
  and the sums of exp(logit - max) and exp(logit - max) v over the rows.
  """
  pb, m, kv_heads, head_dim = prefix_k.shape
  n = -(-m // chunk)
  pad = n * chunk - m
  pmask = (jnp.ones((1, m), bool) if prefix_mask is None else
           prefix_mask.astype(bool))

  def chunks(x):  # [pb, m, h, d] -> [n, pb, h, chunk, d]
    x = jnp.pad(x.astype(qg.dtype), ((0, 0), (0, pad), (0, 0), (0, 0)))
    return jnp.transpose(x.reshape(pb, n, chunk, kv_heads, head_dim),
                         (1, 0, 3, 2, 4))

  mask_chunks = jnp.transpose(jnp.pad(pmask, ((0, 0), (0, pad))).reshape(
      pmask.shape[0], n, chunk), (1, 0, 2))
  return _sums(qg, chunks(prefix_k), chunks(prefix_v), mask_chunks)


def _chunk_logits(qg, k_c, m_c):
  """[b, h, g, q, c] scaled float32 logits of one chunk, -inf where masked."""
  scale = 1.0 / jnp.sqrt(F32(qg.shape[-1]))
  if k_c.shape[0] == 1:  # one prefix for the batch: a single larger matmul
    logits = mm('bhgqd,hcd->bhgqc', qg, k_c[0])
  else:
    logits = mm('bhgqd,bhcd->bhgqc', qg, k_c)
  return jnp.where(m_c[:, None, None, None, :], logits * scale, -jnp.inf)


def _rows(w, x, shared: bool):
  """sum over (b,) g, q of w [b,h,g,q,c] x [b,h,g,q,d] -> [pb, h, c, d]."""
  if shared:
    return mm('bhgqc,bhgqd->hcd', w, x)[None]
  return mm('bhgqc,bhgqd->bhcd', w, x)


def _apply_rows(w, rows):
  """w [b,h,g,q,c] times rows [pb, h, c, d] -> [b, h, g, q, d]."""
  if rows.shape[0] == 1:
    return mm('bhgqc,hcd->bhgqd', w, rows[0])
  return mm('bhgqc,bhcd->bhgqd', w, rows)


def _sums_forward(qg, k_chunks, v_chunks, mask_chunks):
  def step(carry, xs):
    run_max, den, num = carry
    k_c, v_c, m_c = xs
    logits = _chunk_logits(qg, k_c, m_c)
    new_max = jnp.maximum(run_max, jnp.max(logits, -1))
    w = jnp.exp(logits - new_max[..., None])
    decay = jnp.exp(run_max - new_max)
    return (new_max, den * decay + jnp.sum(w, -1),
            num * decay[..., None] + _apply_rows(w.astype(v_c.dtype), v_c)
            ), None

  # A finite start keeps exp(run_max - new_max) free of inf - inf.
  init = (jnp.full(qg.shape[:-1], -1e30, F32),
          jnp.zeros(qg.shape[:-1], F32), jnp.zeros(qg.shape, F32))
  out, _ = jax.lax.scan(step, init, (k_chunks, v_chunks, mask_chunks))
  return out


@jax.custom_vjp
def _sums(qg, k_chunks, v_chunks, mask_chunks):
  return _sums_forward(qg, k_chunks, v_chunks, mask_chunks)


def _sums_fwd(qg, k_chunks, v_chunks, mask_chunks):
  out = _sums_forward(qg, k_chunks, v_chunks, mask_chunks)
  return out, (qg, k_chunks, v_chunks, mask_chunks, out[0])


def _sums_bwd(residuals, cotangents):
  """FlashAttention-style backward: each chunk's weights are recomputed from
  the final max, so nothing of size m x q is ever stored. The max is a shift
  that cancels downstream (the caller treats it as a constant)."""
  qg, k_chunks, v_chunks, mask_chunks, final_max = residuals
  _, d_den, d_num = cotangents
  dtype = qg.dtype
  d_num_c = d_num.astype(dtype)
  shared = k_chunks.shape[1] == 1
  scale = 1.0 / jnp.sqrt(F32(qg.shape[-1]))

  def step(d_q, xs):
    k_c, v_c, m_c = xs
    w = jnp.exp(_chunk_logits(qg, k_c, m_c) - final_max[..., None])
    d_v = _rows(w.astype(dtype), d_num_c, shared)
    if shared:
      d_w = d_den[..., None] + mm('bhgqd,hcd->bhgqc', d_num_c, v_c[0])
    else:
      d_w = d_den[..., None] + mm('bhgqd,bhcd->bhgqc', d_num_c, v_c)
    d_logits = (w * d_w * scale).astype(dtype)
    d_q = d_q + _apply_rows(d_logits, k_c)
    return d_q, (_rows(d_logits, qg, shared).astype(k_c.dtype),
                 d_v.astype(v_c.dtype))

  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros(qg.shape, F32),
                                 (k_chunks, v_chunks, mask_chunks))
  return d_q.astype(dtype), d_k, d_v, None


_sums.defvjp(_sums_fwd, _sums_bwd)
