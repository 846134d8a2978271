"""The fused backends (models/fused.py) against the xla path, forward and
gradients: the Pallas kernel runs in interpret mode on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_prefix.models import attention, fused
from ntk_prefix.models.hooks import NtkState


def _case(seed, *, b=2, t=12, h=4, kv=2, d=16, m=5, left_pad=False):
  rng = np.random.RandomState(seed)
  f = lambda *s: jnp.asarray(rng.randn(*s), jnp.float32)
  mask = np.ones((b, t), bool)
  if left_pad:
    mask[-1, :3] = False
  else:
    mask[-1, t - 4:] = False
  return dict(q=f(b, t, h, d), k=f(b, t, kv, d), v=f(b, t, kv, d),
              mask=jnp.asarray(mask), pk=f(1, m, kv, d), pv=f(1, m, kv, d),
              ntk=NtkState(z=0.3 * f(h, d, d), k=jnp.abs(f(h, d))))


def _loss(impl, case, causal, prefix, use_ntk):
  def f(q, k, v, pk, pv, ntk):
    out = attention.attend(
        q, k, v, key_mask=case['mask'], causal=causal,
        prefix_k=pk if prefix else None, prefix_v=pv if prefix else None,
        ntk=ntk if use_ntk else None, impl=impl)
    # Only real query rows: a padded query's output is never used.
    weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(
        out.shape) * case['mask'][:, :, None, None]
    return jnp.sum(out * weights), out
  args = (case['q'], case['k'], case['v'], case['pk'], case['pv'],
          case['ntk'])
  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=range(6),
                                               has_aux=True))(*args)
  return out * case['mask'][:, :, None, None], grads


@pytest.mark.parametrize('causal,prefix,use_ntk,kv,left_pad', [
    (False, False, True, 2, False),   # encoder, NTK state, GQA
    (True, True, True, 2, True),      # decoder: prefix rows, NTK, left pad
    (True, True, False, 1, False),    # prefix only (MQA): kernel gradients
    (False, True, True, 4, False),    # encoder prefix + NTK, no GQA
])
def test_pallas_equals_xla_forward_and_gradients(causal, prefix, use_ntk, kv,
                                                 left_pad):
  case = _case(0, kv=kv, left_pad=left_pad)
  out_x, grads_x = _loss('xla', case, causal, prefix, use_ntk)
  out_p, grads_p = _loss('pallas', case, causal, prefix, use_ntk)
  np.testing.assert_allclose(out_p, out_x, rtol=1e-5, atol=1e-5)
  for name, gx, gp in zip(('q', 'k', 'v', 'prefix_k', 'prefix_v', 'ntk'),
                          grads_x, grads_p):
    for a, b in zip(jax.tree.leaves(gx), jax.tree.leaves(gp)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


def test_lse_gradient_is_exact():
  """with_lse's custom VJP against autodiff of a plain logsumexp."""
  case = _case(1, kv=2)
  q, k, v, mask = case['q'], case['k'], case['v'], case['mask']

  def reference(q, k, v):
    qg = jnp.repeat(k, 2, axis=2)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, qg) / 4.0
    logits = jnp.where(mask[:, None, None, :], logits, -jnp.inf)
    lse = jnp.transpose(jax.nn.logsumexp(logits, -1), (0, 2, 1))
    return jnp.sum(jnp.cos(lse) * mask[..., None])  # real queries only

  def fused_lse(q, k, v):
    _, lse = fused.with_lse(q, k, v, mask, False, 'pallas')
    return jnp.sum(jnp.cos(lse) * mask[..., None])

  want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(fused_lse, argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_auto_and_bad_names():
  assert fused.resolve('auto', jnp.bfloat16) == (
      'cudnn' if jax.default_backend() == 'gpu' else 'xla')
  with pytest.raises(ValueError, match='attention_impl'):
    fused.resolve('flash', jnp.float32)
