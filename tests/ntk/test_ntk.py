"""The NTK analysis tools against direct computations."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_prefix import checkpoints, methods, models
from ntk_prefix.ntk import approximation, fixed_terms, kernel, stylized


def _toy():
  rng = np.random.RandomState(0)
  params = {'w': jnp.asarray(rng.randn(5, 3), jnp.float32),
            'b': jnp.asarray(rng.randn(3), jnp.float32)}
  x = jnp.asarray(rng.randn(11, 5), jnp.float32)
  fn = lambda p, xs: jnp.sum(jnp.tanh(xs @ p['w'] + p['b']) ** 2, axis=1)
  return fn, params, x


@pytest.mark.parametrize('chunk,max_bytes', [(4, 1 << 30), (3, 0), (100, 0)])
def test_empirical_ntk_equals_jacobian_product(chunk, max_bytes):
  fn, params, x = _toy()
  jac = jax.jacrev(fn)(params, x)  # full Jacobian, per leaf [n, ...]
  flat = np.concatenate([np.asarray(j).reshape(11, -1)
                         for j in jax.tree.leaves(jac)], axis=1)
  k = kernel.empirical_ntk(fn, params, x, chunk=chunk, max_bytes=max_bytes)
  np.testing.assert_allclose(k, flat @ flat.T, rtol=1e-5, atol=1e-5)
  eig = kernel.eigenspectrum(k)
  assert np.all(np.diff(eig) <= 1e-9) and eig[-1] > -1e-6  # sorted, PSD
  assert kernel.kernel_drift(k, k) == 0.0
  assert kernel.kernel_drift(2 * k, k) == pytest.approx(1.0)


def test_model_kernel_is_over_the_method_state_only(hf_checkpoint):
  """NTK of a BERT margin w.r.t. NTK-Attention's state and head: equals the
  Jacobian product over exactly those leaves, and ignores frozen weights."""
  path, _ = hf_checkpoint('bert')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get('ntk_attention', cfg, {'init': 'normal'})
  params = {'method': method.init(jax.random.PRNGKey(0)),
            'head': models.init_classifier_head(jax.random.PRNGKey(1), cfg, 2)}
  rng = np.random.RandomState(0)
  ids = rng.randint(3, cfg.vocab_size, (5, 7)).astype(np.int32)
  inputs = {'input_ids': ids, 'attention_mask': np.ones_like(ids)}
  fn = kernel.model_output_fn(cfg, frozen, method, 'margin')
  k = kernel.empirical_ntk(fn, params, inputs, chunk=2)
  jac = jax.jit(jax.jacrev(fn))(params, inputs)
  flat = np.concatenate([np.asarray(j).reshape(5, -1)
                         for j in jax.tree.leaves(jac)], axis=1)
  assert flat.shape[1] == methods.count_params(params)
  np.testing.assert_allclose(k, flat @ flat.T, rtol=1e-4, atol=1e-6)


def test_stylized_prediction_matches_numpy():
  setting = stylized.Setting(n=3, length=2, dim=4)
  x, _, frozen = setting.data()
  prefix = stylized.init_prefix(jax.random.PRNGKey(3), 5, 4)
  keys, signs = (np.asarray(prefix[k], np.float64) for k in ('keys', 'values'))
  x64, wq = np.asarray(x, np.float64), np.asarray(frozen['wq'], np.float64)
  want = []
  for xi in x64:
    logits = (xi @ wq) @ keys.T / 2.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want.append(np.mean(p @ signs))
  want = np.asarray(want)
  for scaling, factor in (('softmax', 1.0), ('ntk', np.sqrt(5.0))):
    got = stylized.predict(prefix['keys'], prefix['values'], frozen, x,
                           scaling)
    np.testing.assert_allclose(got, factor * want, rtol=1e-4, atol=1e-6)


def test_longer_prefix_is_lazier_in_the_ntk_scaling():
  """The NTK-regime signature: a longer prefix fits the data while its kernel
  and its rows move less; plain softmax (mean-field) keeps moving."""
  setting = stylized.Setting(n=8, length=3, dim=8, scaling='ntk')
  short, long = (stylized.train(setting, m, steps=60, kernel_every=60)
                 for m in (4, 4096))
  assert long['loss'][-1] < 0.2 * long['loss'][0]
  assert long['checks'][-1]['drift'] < 0.2 * short['checks'][-1]['drift']
  assert long['checks'][-1]['distance'] < 0.1 * short['checks'][-1]['distance']
  mean_field = stylized.train(dataclasses.replace(setting, scaling='softmax'),
                              4096, steps=60, kernel_every=60)
  assert mean_field['checks'][-1]['drift'] > 0.5


def test_closed_form_converges_where_the_kernel_estimate_does():
  """Zero prefix keys give every prefix row the weight exp(q.0) = 1; positive
  random features estimate that 1 without bias, so with many features the
  closed-form state reproduces attention over the prefix."""
  prob = approximation.random_problem(8, dim=4, length=3, n_train=2,
                                      n_test=2)
  prob = approximation.Problem(prob.train, prob.test,
                               jnp.zeros_like(prob.prefix_k), prob.prefix_v)
  proj = approximation.feature_projection('random', 20000, 4)
  z, k = approximation.closed_form(prob, proj)
  err = approximation.relative_error(
      approximation.estimate(prob, 'test', z, k, proj),
      approximation.target(prob, 'test'))
  assert err < 1e-2


def test_trained_estimator_beats_closed_form_on_training_inputs():
  rows = approximation.sweep([64], 'random', [('elu', 0)], fit_steps=100)
  by = {r['estimator']: r for r in rows}
  assert by['trained']['train_error'] < by['closed_form']['train_error']
  assert all(np.isfinite(r['error']) for r in rows)


@pytest.mark.parametrize('features', [0, 16])
def test_fit_objective_equals_ntk_attention(features):
  """The trained estimator's objective precomputes what the state does not
  change (phi(q), the input keys' softmax sums); its output is attend()'s
  NTK-Attention, on causal GQA inputs with padding."""
  rng = np.random.RandomState(0)
  n, length, heads, kv_heads, dim = 3, 7, 4, 2, 8
  qkv = tuple(jnp.asarray(rng.randn(n, length, h, dim), jnp.float32)
              for h in (heads, kv_heads, kv_heads))
  mask = np.ones((n, length), np.int32)
  mask[1, 5:] = 0
  mask[2, :2] = 0  # left padding: a query with no key but itself
  prefix = jnp.asarray(rng.randn(1, 5, kv_heads, dim), jnp.float32)
  prob = approximation.Problem(qkv, qkv, prefix, prefix, train_mask=mask,
                               test_mask=mask, causal=True)
  proj = (approximation.feature_projection('random', features, dim)
          if features else None)
  z, k = approximation.closed_form(prob, proj)
  z = z + 0.1 * jnp.asarray(rng.randn(*z.shape), jnp.float32)
  fixed = fixed_terms.fixed_terms(prob, 'train', proj)
  np.testing.assert_allclose(
      fixed_terms.combine(fixed, z, k),
      fixed_terms.head_major(approximation.estimate(prob, 'train', z, k,
                                                      proj)),
      rtol=1e-5, atol=1e-5)


def test_random_features_error_falls_with_features():
  prob = approximation.random_problem(256, dim=8, length=4, n_train=4,
                                      n_test=8)
  goal = approximation.target(prob, 'test')
  errors = []
  for r in (4, 64, 4096):
    proj = approximation.feature_projection('random', r, 8, seed=1)
    z, k = approximation.closed_form(prob, proj)
    errors.append(approximation.relative_error(
        approximation.estimate(prob, 'test', z, k, proj), goal))
  assert errors[0] > errors[1] > errors[2]
