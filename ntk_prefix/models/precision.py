"""Mixed precision for matmuls: 16-bit operands, float32 accumulation.

Under `model.dtype=bfloat16` every sequence-sized matmul takes bf16 operands
and accumulates in float32 (`preferred_element_type`). Autodiff alone would
not keep that in the backward pass: the float32 cotangent of a float32
result makes both transposed matmuls float32. So the backward pass here
casts the cotangent to the operands' dtype first, as flash-attention
kernels do. For float32 operands these are the plain ops.
"""
import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum in a's dtype, float32 result."""
  if a.dtype == F32:
    return jnp.einsum(spec, a, b.astype(F32))
  return _einsum16(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum16(spec, a, b):
  return jnp.einsum(spec, a, b.astype(a.dtype), preferred_element_type=F32)


def _einsum16_fwd(spec, a, b):
  return _einsum16(spec, a, b), (a, b)


def _einsum16_bwd(spec, residuals, cotangent):
  a, b = residuals
  d_a, d_b = _low_vjp(lambda x, y: jnp.einsum(spec, x, y), a,
                      b.astype(a.dtype), cotangent)
  return d_a, d_b.astype(b.dtype)


_einsum16.defvjp(_einsum16_fwd, _einsum16_bwd)


def _low_vjp(f, a, b, cotangent):
  """Cotangents of f(a, b) with every matmul in a's dtype."""
  _, vjp = jax.vjp(f, a, b)
  return vjp(cotangent.astype(a.dtype))


def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """For nn.Dense: float32 accumulation, result in the operands' dtype."""
  del kwargs
  if lhs.dtype == F32:
    return jax.lax.dot_general(lhs, rhs.astype(F32), dimension_numbers,
                               precision=precision)
  return _dot16(lhs, rhs.astype(lhs.dtype), dimension_numbers, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot16(lhs, rhs, dimension_numbers, precision):
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=F32).astype(lhs.dtype)


def _dot16_fwd(lhs, rhs, dimension_numbers, precision):
  return _dot16(lhs, rhs, dimension_numbers, precision), (lhs, rhs)


def _dot16_bwd(dimension_numbers, precision, residuals, cotangent):
  lhs, rhs = residuals
  return _low_vjp(lambda x, y: jax.lax.dot_general(
      x, y, dimension_numbers, precision=precision), lhs, rhs, cotangent)


_dot16.defvjp(_dot16_fwd, _dot16_bwd)
