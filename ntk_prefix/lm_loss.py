"""Next-token loss where the loss is: the LM head only at the loss positions.

On instruction data (GSM8K, E2E) only answer tokens carry loss, so the
49k-way head and its softmax run on those rows alone: each row's loss
positions are gathered before the head (`loss_positions`, padded per batch
to a bucket, weight 0 on padding), and the cross-entropy runs over chunks of
positions, so no [tokens, vocab] float32 array is kept (as levanter and
maxtext do). The gradient in h of a position's loss is known in the forward
pass, (softmax - onehot) W^T, so each chunk computes it there, while its
logits are at hand (as Liger-Kernel's fused linear cross-entropy does): the
backward pass only scales it, where recomputing each chunk's logits there
cost one more head matmul (2 n d vocab FLOPs, 7% of SmolLM2's step on 8 E2E
rows).
"""
import jax
import jax.numpy as jnp

from ntk_prefix.models import precision

F32 = jnp.float32

# Positions per chunk: [chunk, vocab] float32 logits live at a time (256 x
# 49,152 x 4 B = 50 MB for SmolLM2).
CHUNK = 256


def head_kernel(cfg, params) -> jax.Array:
  """The LM head as a [hidden, vocab] matrix (the embeddings when tied)."""
  if cfg.tie_embeddings:
    return params['tokens']['embedding'].T
  return params['lm_head']['kernel']


def gather_rows(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """hidden [b, t, d], positions [b, k] -> [b, k, d] (row-local, so a
  batch sharded over devices or processes stays so)."""
  return jnp.take_along_axis(hidden, positions[..., None], axis=1)


def cross_entropy(h: jax.Array, kernel: jax.Array, targets: jax.Array,
                  chunk: int = CHUNK) -> tuple:
  """(nll, correct) per row of h [n, d] against kernel [d, vocab]: logits
  in float32 (float32 accumulation of bf16 operands), chunk by chunk."""
  n = h.shape[0]
  size = -(-n // -(-n // chunk))  # the fewest chunks of at most `chunk`,
  pad = -n % size  # evenly sized: less than one row of padding per chunk
  hs = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, size, h.shape[-1])
  ts = jnp.pad(targets, (0, pad)).reshape(-1, size)
  nll, correct = _chunked(hs, kernel, ts)
  return nll.reshape(-1)[:n], correct.reshape(-1)[:n]


def _logits(hc, kernel):
  return precision.einsum('nd,dv->nv', hc, kernel)


def _nll(logits, tc) -> tuple:
  """(nll, correct, log-sum-exp) of one chunk's float32 logits."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
  return lse - target, jnp.argmax(logits, axis=-1) == tc, lse


def _d_logits(logits, lse, tc):
  """d nll / d logits: softmax - onehot(target), float32."""
  return jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(
      tc, logits.shape[-1], dtype=F32)


@jax.custom_vjp
def _chunked(hs, kernel, ts):
  def one(args):
    hc, tc = args
    nll, correct, _ = _nll(_logits(hc, kernel), tc)
    return nll, correct
  return jax.lax.map(one, (hs, ts))


def _chunked_fwd(hs, kernel, ts):
  def one(args):
    hc, tc = args
    logits = _logits(hc, kernel)
    nll, correct, lse = _nll(logits, tc)
    d_h = precision.einsum('nv,dv->nd',
                           _d_logits(logits, lse, tc).astype(hc.dtype), kernel)
    return nll, correct, d_h, lse
  nll, correct, d_hs, lses = jax.lax.map(one, (hs, ts))
  return (nll, correct), (d_hs, lses, hs, kernel, ts)


def _chunked_bwd(residuals, cotangents):
  d_hs, lses, hs, kernel, ts = residuals
  g = cotangents[0]  # d loss / d nll [chunks, size]; `correct` has none
  d_h = (g[..., None] * d_hs).astype(hs.dtype)

  # The head's own gradient (full fine-tuning) recomputes each chunk's
  # logits (the forward pass's log-sum-exp kept); where the head is frozen
  # nothing reads it and XLA drops it.
  def one(acc, args):
    hc, tc, lse, gc = args
    d_logits = _d_logits(_logits(hc, kernel), lse, tc) * gc[:, None]
    return acc + precision.einsum('nd,nv->dv', hc, d_logits.astype(hc.dtype)
                                  ), None
  d_kernel, _ = jax.lax.scan(one, jnp.zeros(kernel.shape, F32),
                             (hs, ts, lses, g))
  return d_h, d_kernel.astype(kernel.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
