"""The trained estimator's objective, fast: NTK-Attention over fixed inputs
as what the state does not change (computed once) plus the state's term.
`problem` is an approximation.Problem (duck-typed: this module sits below it).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from ntk_prefix.models.features import feature_map


def fixed_terms(problem, split: str,
                projection: Optional[jax.Array]) -> dict:
  """What NTK-Attention over `split`'s inputs computes that the state does
  not change, heads leading and the n x L queries flattened (the layout of
  the matmul with the state, so a step transposes nothing): phi(q) [heads,
  N, r], and the softmax sums over the input's own keys (num [heads, N, d],
  den [heads, N]) shifted by their peak. Fitting then costs a matmul with
  the state a step, not the L x L attention again."""
  q, k, v = getattr(problem, split)
  groups = q.shape[2] // k.shape[2]
  k, v = (jnp.repeat(a.astype(jnp.float32), groups, axis=2) for a in (k, v))
  q = q.astype(jnp.float32)
  logits = jnp.einsum('nqhd,nkhd->hnqk', q, k) / jnp.sqrt(
      jnp.float32(q.shape[-1]))
  mask = problem.mask(split)
  valid = jnp.ones(logits.shape[-1:], bool) if mask is None else (
      jnp.asarray(mask, bool)[None, :, None, :])
  if problem.causal:
    valid = valid & jnp.tril(jnp.ones(logits.shape[-2:], bool))
  logits = jnp.where(valid, logits, -jnp.inf)
  peak = jnp.max(logits, axis=-1)
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  weights = jnp.exp(logits - peak[..., None])
  heads = q.shape[2]
  return {'phi': head_major(feature_map(q, projection)),
          'peak': peak.reshape(heads, -1),
          'num': jnp.einsum('hnqk,nkhd->hnqd', weights, v).reshape(
              heads, -1, v.shape[-1]),
          'den': jnp.sum(weights, -1).reshape(heads, -1)}


def head_major(x: jax.Array) -> jax.Array:
  """[n, L, heads, d] -> [heads, n * L, d]."""
  return jnp.transpose(x, (2, 0, 1, 3)).reshape(x.shape[2], -1, x.shape[3])


def combine(fixed: dict, z: jax.Array, k_sum: jax.Array) -> jax.Array:
  """NTK-Attention's output [heads, N, d] from `fixed_terms` and a state (z
  [heads, r, d], k [heads, r]): estimate()'s, rounding apart. The shift
  cancels; it keeps the exponentials finite."""
  num = jnp.matmul(fixed['phi'], z)
  den = jnp.matmul(fixed['phi'], jnp.abs(k_sum)[..., None])[..., 0]
  shift = jax.lax.stop_gradient(jnp.maximum(
      jnp.maximum(fixed['peak'], jnp.log(jnp.maximum(den, 1e-30))), -80.0))
  keys, state = jnp.exp(fixed['peak'] - shift), jnp.exp(-shift)
  num = fixed['num'] * keys[..., None] + num * state[..., None]
  den = fixed['den'] * keys + den * state
  return num / jnp.where(den > 0, den, 1.0)[..., None]
