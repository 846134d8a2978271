"""NTK-Attention's feature map and the closed-form summary of an explicit
prefix: shared by the attention (models) and the methods (through hooks)."""
from typing import Optional

import jax
import jax.numpy as jnp

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
    return elu_plus_one(x)
  r = projection.shape[0]
  proj = jnp.einsum('...d,rd->...r', x, projection.astype(jnp.float32))
  return jnp.exp(proj - 0.5 * jnp.sum(x * x, -1, keepdims=True)) / jnp.sqrt(
      jnp.float32(r))


@jax.custom_jvp
def elu_plus_one(x: Array) -> Array:
  """elu(x) + 1: x + 1 above 0, exp(x) below."""
  return jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))


@elu_plus_one.defjvp
def _elu_plus_one_jvp(primals, tangents):
  # The derivative is min(phi, 1): 1 above 0, exp(x) = phi below. Written
  # in phi, the backward pass reads the phi(q) it keeps anyway for dZ, where
  # autodiff of elu kept a second [batch, heads, q, features] array.
  (x,), (x_dot,) = primals, tangents
  phi = elu_plus_one(x)
  return phi, jnp.minimum(phi, 1.0) * x_dot


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
