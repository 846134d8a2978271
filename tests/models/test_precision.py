"""Mixed-precision matmuls (models/precision.py): bf16 operands, float32
results, forward and backward, compiled and run on this backend."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_prefix.models import precision

SIZES = dict(b=2, h=3, g=2, q=5, c=7, d=4, k=6, t=3, i=8, r=2, o=5, n=9,
             v=11)
# Every spec the models use, and output orders of the prefix-chunk ones:
# bhgqc,hcd->bhgqd (a chunked prefix shared by the batch) once compiled on
# XLA:CPU to a dot without a bf16 x bf16 -> float32 kernel and failed at
# run time, in the forward pass and in the backward pass of bhgqd,hcd->bhgqc.
SPECS = ['bhgqd,bhkd->bhgqk', 'bhgqk,bhkd->bhgqd', 'bhgqd,hcd->bhgqc',
         'bhgqd,bhcd->bhgqc', 'bhgqc,bhgqd->hcd', 'bhgqc,bhgqd->bhcd',
         'bhgqc,hcd->bhgqd', 'bhgqc,bhcd->bhgqd', 'bhgqc,hcd->hbgqd',
         'bhgqc,hcd->bhgdq', 'bti,ir->btr', 'btr,ro->bto', 'btd,vd->btv',
         'nd,dv->nv']


def _bf16_values(shape, seed):
  """Random numbers that bfloat16 holds exactly, as float64."""
  x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
  return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)


@pytest.mark.parametrize('spec', SPECS)
def test_bf16_einsum_and_its_gradients_equal_float64(spec):
  sa, rest = spec.split(',')
  sb, out = rest.split('->')
  a, b, g = (_bf16_values([SIZES[x] for x in s], i)
             for i, s in enumerate((sa, sb, out)))
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)

  def loss(a, b):
    y = precision.einsum(spec, a, b)
    return jnp.sum(y * g), y

  (_, y), (d_a, d_b) = jax.jit(jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True))(bf(a), bf(b))
  assert y.dtype == jnp.float32
  assert d_a.dtype == d_b.dtype == jnp.bfloat16
  # Exact products of bf16 values, summed in float32: float32 rounding only.
  np.testing.assert_allclose(y, np.einsum(spec, a, b), rtol=1e-5, atol=1e-5)
  # The gradients are rounded to bf16 (the operands' dtype): 8 bits.
  ref_a = np.einsum(f'{out},{sb}->{sa}', g, b)
  ref_b = np.einsum(f'{sa},{out}->{sb}', a, g)
  for got, ref in ((d_a, ref_a), (d_b, ref_b)):
    np.testing.assert_allclose(np.asarray(got, np.float64), ref,
                               rtol=2 ** -7, atol=2 ** -7 * np.abs(ref).max())


def test_float32_einsum_is_jnp_einsum():
  a, b = _bf16_values((2, 3, 4), 0), _bf16_values((3, 4, 5), 1)
  a, b = jnp.float32(a), jnp.float32(b)
  np.testing.assert_array_equal(precision.einsum('bhd,hdk->bhk', a, b),
                                jnp.einsum('bhd,hdk->bhk', a, b))


@pytest.mark.parametrize('spec', ['ab,bc->a', 'aa,ab->b'])
def test_a_spec_that_is_not_a_matmul_is_refused(spec):
  # An index summed inside one operand, or repeated in one (a trace).
  a = jnp.ones((3, 3), jnp.bfloat16)
  with pytest.raises(ValueError, match=repr(spec)):
    precision.einsum(spec, a, a)
