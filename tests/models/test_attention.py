"""The attention function (the hook point) against the NumPy reference."""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from ntk_prefix.models import attention
from ntk_prefix.models.hooks import NtkState


def _inputs(seed, b=2, t=5, h=4, kv=2, d=8, m=3, scale=1.0):
  rng = np.random.RandomState(seed)
  q = scale * rng.randn(b, t, h, d).astype(np.float32)
  k = scale * rng.randn(b, t, kv, d).astype(np.float32)
  v = rng.randn(b, t, kv, d).astype(np.float32)
  mask = np.ones((b, t), np.int32)
  mask[-1, t - 2:] = 0
  pk = rng.randn(1, m, kv, d).astype(np.float32)
  pv = rng.randn(1, m, kv, d).astype(np.float32)
  z = rng.randn(h, d, d).astype(np.float32)
  kk = rng.randn(h, d).astype(np.float32)
  return q, k, v, mask, pk, pv, z, kk


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('kv', [4, 2, 1])
def test_ntk_attention_equals_reference(causal, kv):
  q, k, v, mask, pk, pv, z, kk = _inputs(0, kv=kv)
  out = attention.attend(q, k, v, key_mask=mask, causal=causal,
                         ntk=NtkState(z=z, k=kk))
  ref = reference.attention(q, k, v, mask, causal, ntk_z=z, ntk_k=kk)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_prefix_attention_equals_reference(causal):
  q, k, v, mask, pk, pv, z, kk = _inputs(1)
  out = attention.attend(q, k, v, key_mask=mask, causal=causal, prefix_k=pk,
                         prefix_v=pv, ntk=NtkState(z=z, k=kk))
  ref = reference.attention(q, k, v, mask, causal, pk, pv, z, kk)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_empty_or_masked_prefix_and_zero_ntk_change_nothing():
  q, k, v, mask, pk, pv, z, kk = _inputs(2)
  plain = attention.attend(q, k, v, key_mask=mask, causal=True)
  empty = attention.attend(q, k, v, key_mask=mask, causal=True,
                           prefix_k=pk[:, :0], prefix_v=pv[:, :0])
  masked = attention.attend(q, k, v, key_mask=mask, causal=True, prefix_k=pk,
                            prefix_v=pv, prefix_mask=np.zeros((1, 3), bool))
  zero = attention.attend(q, k, v, key_mask=mask, causal=True,
                          ntk=NtkState(z=0 * z, k=0 * kk))
  for other in (empty, zero):  # bit for bit
    np.testing.assert_array_equal(np.asarray(other), np.asarray(plain))
  # A longer reduction may round differently in the last bit.
  np.testing.assert_allclose(masked, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('logit', [80.0, -80.0])
def test_large_logits_stay_finite_and_accurate(logit):
  # Every logit equals `logit`: the official form multiplies exp(+-80)
  # into its terms; ours must match the float64 reference.
  d = 16
  q = np.full((1, 4, 2, d), 1.0, np.float32)
  k = np.full((1, 4, 2, d), logit * np.sqrt(d) / d, np.float32)
  rng = np.random.RandomState(0)
  k = k + 0.01 * rng.randn(*k.shape).astype(np.float32)
  v = rng.randn(1, 4, 2, d).astype(np.float32)
  z = rng.randn(2, d, d).astype(np.float32)
  kk = np.abs(rng.randn(2, d)).astype(np.float32)
  out = attention.attend(q, k, v, key_mask=None, causal=True,
                         ntk=NtkState(z=z, k=kk))
  ref = reference.attention(q, k, v, None, True, ntk_z=z, ntk_k=kk)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_bfloat16_stays_finite_and_close():
  q, k, v, mask, pk, pv, z, kk = _inputs(3, scale=6.0)  # logits in the tens
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  out = attention.attend(bf(q), bf(k), bf(v), key_mask=mask, causal=True,
                         ntk=NtkState(z=z, k=kk))
  assert out.dtype == jnp.bfloat16
  f = lambda a: np.asarray(bf(a), np.float32)
  ref = reference.attention(f(q), f(k), f(v), mask, True, ntk_z=z, ntk_k=kk)
  out = np.asarray(out, np.float32)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


@pytest.mark.parametrize('per_row_prefix', [False, True])
def test_bfloat16_chunked_prefix_trains_like_float32(per_row_prefix):
  """bf16 operands through the chunked prefix, forward and backward, run
  (the shared prefix's gradient once failed at run time on XLA:CPU, see
  tests/models/test_precision.py), within bf16 rounding of float32."""
  q, k, v, mask, _, _, _, _ = _inputs(6)
  rng = np.random.RandomState(7)
  pb = q.shape[0] if per_row_prefix else 1
  pk, pv = (rng.randn(pb, 20, k.shape[2], k.shape[3]).astype(np.float32)
            for _ in range(2))
  w = rng.randn(*q.shape).astype(np.float32)

  def loss(q, pk, pv):
    out = attention.attend(q, k.astype(q.dtype), v.astype(q.dtype),
                           key_mask=mask, causal=True, prefix_k=pk,
                           prefix_v=pv, prefix_chunk=8)
    return jnp.sum(out.astype(jnp.float32) * w)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  value, grads = grad(q, pk, pv)
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  value16, grads16 = grad(bf(q), bf(pk), bf(pv))
  assert abs(float(value16) - float(value)) <= 1e-3 * float(jnp.sum(
      jnp.abs(w)))
  for g16, g in zip(grads16, grads):
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g16, np.float32), g,
                               atol=0.02 * float(jnp.abs(g).max()))


def test_zero_init_ntk_has_finite_gradients():
  q, k, v, mask, _, _, z, kk = _inputs(4)

  def loss(state):
    return jnp.sum(attention.attend(q, k, v, key_mask=mask, causal=True,
                                    ntk=NtkState(**state)) ** 2)

  grads = jax.grad(loss)({'z': jnp.zeros_like(z), 'k': jnp.zeros_like(kk)})
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.abs(grads['z']).sum() > 0


@pytest.mark.parametrize('t', [5, 2])  # the training and decoding matmuls
def test_ntk_gradients_equal_the_reference_derivative(t):
  # d loss along a random direction of (q, Z, k): JAX's gradient against a
  # central difference of the float64 loop reference.
  q, k, v, mask, _, _, z, kk = _inputs(5, t=t)
  mask = np.ones_like(mask)
  w = np.random.RandomState(6).randn(*q.shape)
  du = [np.random.RandomState(7 + i).randn(*a.shape)
        for i, a in enumerate((q, z, kk))]

  def loss(q, z, kk):
    return jnp.sum(attention.attend(q, k, v, key_mask=mask, causal=True,
                                    ntk=NtkState(z=z, k=kk)) * w)

  grads = jax.grad(loss, argnums=(0, 1, 2))(q, z, kk)
  along = sum(float(np.sum(np.asarray(g, np.float64) * u))
              for g, u in zip(grads, du))
  eps = 1e-5
  ref = lambda s: np.sum(w * reference.attention(
      q + s * du[0], k, v, mask, True, ntk_z=z + s * du[1],
      ntk_k=kk + s * du[2]))
  np.testing.assert_allclose(along, (ref(eps) - ref(-eps)) / (2 * eps),
                             rtol=1e-4)


# Compiled: one small program per drawn shape is quicker than dispatching
# the unfused ops one by one.
_jit_attend = jax.jit(
    lambda q, k, v, mask, pk, pv, ntk, causal, chunk: attention.attend(
        q, k, v, key_mask=mask, causal=causal, prefix_k=pk, prefix_v=pv,
        prefix_chunk=chunk, ntk=ntk), static_argnums=(7, 8))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(b=st.integers(1, 2), t=st.integers(1, 6),
                  kv=st.sampled_from([1, 2, 3]), g=st.integers(1, 3),
                  d=st.sampled_from([2, 4, 8]), m=st.integers(0, 7),
                  causal=st.booleans(), use_ntk=st.booleans(),
                  per_row_prefix=st.booleans(),
                  chunk=st.sampled_from([1, 3, attention.PREFIX_CHUNK]),
                  seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_reference(b, t, kv, g, d, m, causal, use_ntk,
                                       per_row_prefix, chunk, seed):
  rng = np.random.RandomState(seed)
  h = kv * g
  q = rng.randn(b, t, h, d).astype(np.float32)
  k = rng.randn(b, t, kv, d).astype(np.float32)
  v = rng.randn(b, t, kv, d).astype(np.float32)
  mask = (rng.rand(b, t) > 0.3).astype(np.int32)
  mask[:, 0] = 1
  pb = b if per_row_prefix else 1
  pk = rng.randn(pb, m, kv, d).astype(np.float32) if m else None
  pv = rng.randn(pb, m, kv, d).astype(np.float32) if m else None
  z = rng.randn(h, d, d).astype(np.float32) if use_ntk else None
  kk = rng.randn(h, d).astype(np.float32) if use_ntk else None
  out = _jit_attend(q, k, v, mask, pk, pv,
                    NtkState(z=z, k=kk) if use_ntk else None, causal, chunk)
  assert out.shape == (b, t, h, d)
  ref = reference.attention(q, k, v, mask, causal, pk, pv, z, kk)
  np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5)


def test_chunked_prefix_has_the_same_gradients():
  q, k, v, mask, pk, pv, z, kk = _inputs(5, m=10)
  pmask = np.ones((1, 10), bool)
  pmask[0, 4] = False

  def loss(pk, pv, q, chunk):
    out = attention.attend(q, k, v, key_mask=mask, causal=True, prefix_k=pk,
                           prefix_v=pv, prefix_mask=pmask,
                           ntk=NtkState(z=z, k=kk), prefix_chunk=chunk)
    return jnp.sum(jnp.sin(out))

  whole = jax.grad(loss, argnums=(0, 1, 2))(pk, pv, q, 100)
  chunked = jax.grad(loss, argnums=(0, 1, 2))(pk, pv, q, 3)
  for a, b in zip(whole, chunked):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(whole[0])[0, 4] == 0)  # a masked row learns nothing


def test_chunked_prefix_memory_does_not_grow_with_m_times_sequence():
  b, t, h, d = 2, 256, 4, 16
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(b, t, h, d), jnp.float32)

  def temp_bytes(m, chunk):
    pk = jnp.zeros((1, m, h, d))
    def loss(pk, pv):
      return jnp.sum(attention.attend(q, q, q, key_mask=None, causal=True,
                                      prefix_k=pk, prefix_v=pv,
                                      prefix_chunk=chunk))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(pk, pk).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = b * h * t * 8192 * 4  # one [b, h, t, 8192] float32 array
  # Attending to the prefix whole stores logits for the backward pass ...
  assert temp_bytes(16384, 16384) - temp_bytes(8192, 8192) > logits_bytes
  # ... the chunked path grows only with m x head_dim (the gradients).
  growth = temp_bytes(16384, 128) - temp_bytes(8192, 128)
  assert growth < logits_bytes / 8


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_zero_ntk_state_adds_exactly_nothing_at_any_logit_scale(dtype):
  """Z = k = 0 (the official ViT init) with every logit of a query between
  -200 and 200: the output is plain attention's, never NaN (0 * exp(-max)
  overflowed below -88); random state matches the float64 reference."""
  rng = np.random.RandomState(0)
  b, t, h, d = 2, 5, 4, 8
  unit = rng.randn(d)
  unit /= np.linalg.norm(unit)
  zero = NtkState(jnp.zeros((h, d, d)), jnp.zeros((h, d)))
  for logit in (-200, -120, -90, -50, 0, 50, 120, 200):
    k = np.tile(unit, (b, t, h, 1)) + 0.01 * rng.randn(b, t, h, d)
    q = logit * np.sqrt(d) * np.tile(unit, (b, t, h, 1)) + 0.01 * rng.randn(
        b, t, h, d)
    v = rng.randn(b, t, h, d)
    q, k, v = (jnp.asarray(a, dtype) for a in (q, k, v))
    plain = attention.attend(q, k, v, key_mask=None, causal=True)
    with_zero = attention.attend(q, k, v, key_mask=None, causal=True,
                                 ntk=zero)
    assert bool(jnp.all(jnp.isfinite(with_zero.astype(jnp.float32)))), logit
    np.testing.assert_array_equal(np.asarray(with_zero, np.float32),
                                  np.asarray(plain, np.float32))
    z, kk = rng.randn(h, d, d), rng.randn(h, d)
    got = attention.attend(q, k, v, key_mask=None, causal=True,
                           ntk=NtkState(jnp.float32(z), jnp.float32(kk)))
    ref = reference.attention(np.asarray(q, np.float64),
                              np.asarray(k, np.float64),
                              np.asarray(v, np.float64), causal=True,
                              ntk_z=z, ntk_k=kk)
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=tol,
                               rtol=tol, err_msg=str(logit))


def test_zero_ntk_state_still_gets_its_gradient():
  """The zero-safe product keeps d/dZ = exp(-max): a state that starts at
  zero trains (finite differences agree)."""
  from jax.test_util import check_grads
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(1, 4, 2, 8), jnp.float32)
             for _ in range(3))

  def out(z):
    return attention.attend(q, k, v, key_mask=None, causal=False,
                            ntk=NtkState(z, jnp.full((2, 8), 0.3))).sum()

  z0 = jnp.zeros((2, 8, 8))
  assert float(jnp.abs(jax.grad(out)(z0)).max()) > 1e-3
  check_grads(out, (z0,), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_feature_map_is_the_papers_elu_with_its_derivative():
  """phi(x) = elu(x / d**0.25) + 1 and its gradient, against NumPy, at
  negative, zero and positive inputs (its backward pass is written by hand)."""
  from ntk_prefix.models.features import feature_map
  d = 16
  x = np.concatenate([np.linspace(-30, 30, 61), [0.0, -1e-7, 1e-7]])
  x = np.resize(x, (4, d)).astype(np.float32)
  u = x / d ** 0.25
  want = np.where(u > 0, u + 1.0, np.exp(u))
  np.testing.assert_allclose(feature_map(jnp.asarray(x)), want, rtol=1e-6)
  w = np.random.RandomState(0).randn(*x.shape).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(w * feature_map(x)))(jnp.asarray(x))
  np.testing.assert_allclose(
      grad, w * np.where(u > 0, 1.0, np.exp(u)) / d ** 0.25, rtol=1e-6)
