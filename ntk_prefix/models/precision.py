"""Mixed precision for matmuls: 16-bit operands, float32 accumulation.

Under `model.dtype=bfloat16` every sequence-sized matmul takes bf16 operands
and accumulates in float32 (`preferred_element_type`), the backward pass's
two matmuls too: autodiff alone would multiply the float32 cotangent of a
float32 result in float32, so the backward pass here casts the cotangent to
the operands' dtype first, as flash-attention kernels do. Only the float32
accumulation is cheap: on a CPU with AMX (this workplace's), XLA's bf16 x
bf16 -> float32 matmul ran 3-4x faster than float32 at SmolLM2's shapes,
bf16 x bf16 -> bf16 no faster than float32 (benchmarks/precision.py). For
float32 operands these are the plain ops.
"""
import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum in a's dtype, float32 result. spec: two operands, explicit
  output, no ellipsis, every index of an operand in the other or the
  output (a contraction, as every matmul of a transformer is)."""
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
  operands, out = spec.split('->')
  sa, sb = operands.split(',')
  g = cotangent.astype(a.dtype)
  d_a = jnp.einsum(f'{out},{sb}->{sa}', g, b.astype(a.dtype),
                   preferred_element_type=F32)
  d_b = jnp.einsum(f'{sa},{out}->{sb}', a, g, preferred_element_type=F32)
  return d_a.astype(a.dtype), d_b.astype(b.dtype)


_einsum16.defvjp(_einsum16_fwd, _einsum16_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """For nn.Dense: float32 accumulation, result in the operands' dtype."""
  return dot_general_f32(lhs, rhs, dimension_numbers,
                         precision).astype(lhs.dtype)


def dot_general_f32(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """For the LM head: float32 logits, float32 accumulation."""
  del kwargs
  if lhs.dtype == F32:
    return jax.lax.dot_general(lhs, rhs.astype(F32), dimension_numbers,
                               precision=precision)
  return _einsum16(_spec(lhs.ndim, rhs.ndim, dimension_numbers), lhs, rhs)


def _spec(lhs_ndim: int, rhs_ndim: int, dimension_numbers) -> str:
  """dot_general's dimension numbers as an einsum spec (batch dims, then
  lhs's free dims, then rhs's: dot_general's output order)."""
  (lc, rc), (lb, rb) = dimension_numbers
  letters = iter('abcdefghijklmnopqrstuvwxyz')
  lhs, rhs = [None] * lhs_ndim, [None] * rhs_ndim
  for i, j in list(zip(lb, rb)) + list(zip(lc, rc)):
    lhs[i] = rhs[j] = next(letters)
  lhs = [x or next(letters) for x in lhs]
  rhs = [x or next(letters) for x in rhs]
  out = ([lhs[i] for i in lb] +
         [x for i, x in enumerate(lhs) if i not in lb and i not in lc] +
         [x for j, x in enumerate(rhs) if j not in rb and j not in rc])
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
