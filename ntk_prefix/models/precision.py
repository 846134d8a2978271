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


def _contract(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """a x b -> float32: one dot_general, then at most one transpose.

  XLA:CPU (jax 0.10) has no bf16 x bf16 -> float32 kernel for a dot whose
  left operand is contracted on a middle axis, and it can fold a transpose
  of the result into such a dot: the step then fails at run time
  ('Unsupported element type for DotThunk::Execute'). jnp.einsum's operand
  order did this for a chunked prefix shared by the batch
  (bhgqc,hcd->bhgqd). The order here prefers, in turn: no transpose at all
  (jnp.einsum's own rule), a left operand contracted on its trailing axes,
  a result that already ends in the output's last axis. Over every output
  order of the prefix-chunk contractions, forward and backward, 298 of 486
  failed with jnp.einsum's order, 2 (unused ones) with this.
  """
  operands, out = spec.split('->')
  sa, sb = operands.split(',')
  if (sorted(set(sa) ^ set(sb)) != sorted(set(out) - (set(sa) & set(sb)))
      or any(len(set(s)) != len(s) for s in (sa, sb, out))):
    raise ValueError(f'einsum spec {spec!r}: every index must be in both '
                     'operands or in one operand and the output, once each '
                     '(a matmul); use jnp.einsum for anything else')
  batch = [x for x in out if x in sa and x in sb]
  summed = [x for x in sa if x in sb and x not in out]

  def natural(sx, sy):  # dot_general's output order for (x, y)
    return batch + [i for i in sx if i not in sy] + [i for i in sy
                                                     if i not in sx]

  def rank(candidate):  # lower is better; min keeps (a, b) on ties
    sx, _, sy, _ = candidate
    produced = natural(sx, sy)
    return (produced != list(out),
            sorted(sx[len(sx) - len(summed):]) != sorted(summed),
            produced[-1:] != list(out[-1:]))

  sx, x, sy, y = min([(sa, a, sb, b), (sb, b, sa, a)], key=rank)
  dims = ((tuple(map(sx.index, summed)), tuple(map(sy.index, summed))),
          (tuple(map(sx.index, batch)), tuple(map(sy.index, batch))))
  result = jax.lax.dot_general(x, y, dims, preferred_element_type=F32)
  order = natural(sx, sy)
  return jnp.transpose(result, [order.index(i) for i in out])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum16(spec, a, b):
  return _contract(spec, a, b.astype(a.dtype))


def _einsum16_fwd(spec, a, b):
  return _einsum16(spec, a, b), (a, b)


def _einsum16_bwd(spec, residuals, cotangent):
  a, b = residuals
  operands, out = spec.split('->')
  sa, sb = operands.split(',')
  g = cotangent.astype(a.dtype)
  d_a = _contract(f'{out},{sb}->{sa}', g, b.astype(a.dtype))
  d_b = _contract(f'{sa},{out}->{sb}', a, g)
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
