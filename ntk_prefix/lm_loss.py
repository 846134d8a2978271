"""Next-token loss where the loss is: the LM head only at the loss positions.

On instruction data (GSM8K, E2E) only answer tokens carry loss, so the
49k-way head and its softmax run on those rows alone: each row's loss
positions are gathered before the head (`loss_positions`, padded per batch
to a bucket, weight 0 on padding), and the cross-entropy runs over chunks of
positions, each chunk recomputed in the backward pass, so no [tokens, vocab]
float32 array is kept (as levanter and maxtext do).
"""
import jax
import jax.numpy as jnp

from ntk_prefix.models import precision

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
  size = min(chunk, n)
  pad = -n % size
  hs = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, size, h.shape[-1])
  ts = jnp.pad(targets, (0, pad)).reshape(-1, size)

  @jax.checkpoint  # the backward pass recomputes a chunk's logits
  def one(args):
    hc, tc = args
    logits = precision.einsum('nd,dv->nv', hc, kernel)
    target = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target
    return nll, jnp.argmax(logits, axis=-1) == tc

  nll, correct = jax.lax.map(one, (hs, ts))
  return nll.reshape(-1)[:n], correct.reshape(-1)[:n]
