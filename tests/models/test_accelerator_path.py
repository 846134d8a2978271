"""The accelerator path on CPU: scanned layers equal unrolled ones, and the
bfloat16 policy (bf16 operands, float32 accumulation and statistics)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import text_batch
from ntk_prefix import checkpoints, lm_loss, methods, models

# Options that make a method's state non-trivial (random, not zero) where
# its defaults do not; every registered method is tested.
OPTIONS = {'ntk_attention': {'init': 'normal', 'init_std': 0.3,
                             'phi_dropout': 0.2},
           'p_tuning_v2': {'dropout': 0.1}}


def _setup(hf_checkpoint, family, name):
  path, _ = hf_checkpoint(family)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg, OPTIONS.get(name, {}))
  params = method.init(jax.random.PRNGKey(0), frozen)
  # Perturb every leaf so no gradient vanishes by symmetry (LoRA's b = 0).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])
  ids, mask = text_batch(cfg.vocab_size)
  return cfg, frozen, method, params, {'input_ids': ids,
                                       'attention_mask': mask}


@pytest.mark.parametrize('family', ['bert', 'llama'])
@pytest.mark.parametrize('name', sorted(methods.ADAPTING))
def test_scanned_layers_equal_unrolled(hf_checkpoint, family, name):
  cfg, frozen, method, params, batch = _setup(hf_checkpoint, family, name)
  stacked = models.stack_layers(frozen, cfg.num_layers)
  assert 'layer_0' not in stacked
  rng = jax.random.PRNGKey(2)  # train=True: dropout masks must agree too

  def loss(p, scan):
    out = models.apply(cfg, stacked if scan else frozen, p, batch,
                       adapter=method, train=True, rng=rng, scan_layers=scan)
    y = out['logits'] if cfg.is_decoder else out['hidden']
    return jnp.sum(jnp.sin(y)), y

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, y0), g0 = grad(params, False)
  (_, y1), g1 = grad(params, True)
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  # Against the largest gradient: some leaves (a key bias) are 0 up to noise.
  scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g0))
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)
  unstacked = models.unstack_layers(stacked)
  assert jax.tree.structure(unstacked) == jax.tree.structure(frozen)


def _dot_runs(jaxpr, shape, times=1) -> int:
  """How many times the program runs a dot_general whose result has
  `shape` or its transpose: a scan's body counts once per iteration."""
  n = 0
  for eqn in jaxpr.eqns:
    if (eqn.primitive.name == 'dot_general'
        and eqn.outvars[0].aval.shape in (shape, shape[::-1])):
      n += times
    inner = times * eqn.params.get('length', 1)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          n += _dot_runs(sub, shape, inner)
  return n


@pytest.mark.parametrize('scan', [False, True])
def test_prefix_mlp_gradient_is_computed_once(hf_checkpoint, scan):
  """Prefix-Tuning's MLP output is every layer's prefix: its weight gradient
  is one dot a step, not one per layer (each then summed), unrolled or
  scanned. Forward: the MLP's output is one dot too."""
  cfg, frozen, method, params, batch = _setup(hf_checkpoint, 'llama',
                                              'prefix_tuning')
  frozen = models.stack_layers(frozen, cfg.num_layers) if scan else frozen

  def loss(p):
    out = models.apply(cfg, frozen, p, batch, adapter=method, train=False,
                       scan_layers=scan)
    return jnp.sum(out['logits'])

  jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
  assert cfg.num_layers > 1
  w2 = params['w2'].shape
  out_shape = (params['embedding'].shape[0], w2[1])
  assert _dot_runs(jaxpr, w2) == 1
  assert _dot_runs(jaxpr, out_shape) == 1


# A dot is "big" if one operand holds a sequence axis and another axis of
# sequence, hidden, MLP or vocabulary size: the attention logits and mixing,
# the projections, the MLP, the LM head. Sizes are chosen distinct.
LENGTH = 13


def _dots(hlo: str):
  """(operand shapes, operand dtypes, result dtype) of every dot_general in
  StableHLO."""
  for line in hlo.splitlines():
    if 'stablehlo.dot_general' not in line:
      continue
    types = re.search(r':\s*\((tensor<[^)]*)\)\s*->\s*tensor<[0-9x]*?'
                      r'(bf16|f32|f16)>', line)
    operands = re.findall(r'tensor<([0-9x]*)x?(bf16|f32|f16)>', types.group(1))
    yield [tuple(int(d) for d in s.split('x') if d) for s, _ in operands], [
        t for _, t in operands], types.group(2)


@pytest.mark.parametrize('name', ['ntk_attention', 'p_tuning_v2', 'lora',
                                  'full'])
def test_bf16_train_step_has_no_big_float32_dot(hf_checkpoint, name):
  cfg, frozen, method, params, _ = _setup(hf_checkpoint, 'llama', name)
  ids, mask = text_batch(cfg.vocab_size, length=LENGTH)
  batch = {'input_ids': ids, 'attention_mask': mask}
  frozen = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), frozen)
  # The training loss's rows: every position of the batch, flattened.
  seq = {LENGTH, LENGTH + getattr(method.opts, 'length', 0), ids.size}
  wide = seq | {cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size}
  assert not ({cfg.head_dim, cfg.num_heads, ids.shape[0]} & wide), (
      'the test model needs sizes distinct from the sequence length')

  def loss(p):
    out = models.apply(cfg, frozen, p, batch, adapter=method)
    # The model's logits (decoding) and the training loss's chunked head.
    kernel = lm_loss.head_kernel(cfg, method.backbone_params(frozen, p))
    nll, _ = lm_loss.cross_entropy(out['hidden'].reshape(ids.size, -1),
                                   kernel, jnp.asarray(ids).reshape(-1))
    return jnp.mean(out['logits'].astype(jnp.float32) ** 2) + jnp.mean(nll)

  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  big = []
  for shapes, dtypes, result in _dots(hlo):
    for shape, dtype in zip(shapes, dtypes):
      if any(d in seq for d in shape) and sum(d in wide for d in shape) >= 2:
        big.append((shapes, dtypes, result))
        break
  assert big, 'the check found no sequence-sized dot at all'
  f32 = [b for b in big if 'f32' in b[1]]
  assert not f32, f'float32 dots of sequence size: {f32[:3]}'
  # Accumulated in float32, forward and backward: bf16 x bf16 -> f32 (a
  # bf16 result is another kernel, 3-4x slower on a CPU with AMX).
  rounded = [b for b in big if b[2] != 'f32']
  assert not rounded, f'16-bit results of sequence-sized dots: {rounded[:3]}'


@pytest.mark.parametrize('name', ['ntk_attention', 'p_tuning_v2'])
def test_bf16_forward_is_close_to_float32(hf_checkpoint, name):
  cfg, frozen, method, params, batch = _setup(hf_checkpoint, 'llama', name)
  ref = models.apply(cfg, frozen, params, batch, adapter=method)['logits']
  frozen16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), frozen)
  out = models.apply(cfg, frozen16, params, batch, adapter=method)['logits']
  err = np.abs(np.asarray(out, np.float32) - np.asarray(ref))
  # bf16 keeps 8 bits of mantissa: relative error ~ 2**-8 per rounding.
  assert err.max() <= 0.05 * np.abs(np.asarray(ref)).max()


@pytest.mark.parametrize('name', ['prefix_tuning', 'p_tuning_v2'])
def test_bf16_train_step_runs_with_a_chunked_prefix(hf_checkpoint, name):
  """A prefix longer than PREFIX_CHUNK under the bf16 policy, compiled and
  run, gradients finite: Prefix-Tuning at m = 256 once failed here at run
  time on XLA:CPU (a bf16 x bf16 -> float32 dot it has no kernel for), which
  lowering alone does not show."""
  from ntk_prefix.models import attention
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  m = attention.PREFIX_CHUNK + 5
  method = methods.get(name, cfg, methods.prefix_length_options(name, m))
  params = method.init(jax.random.PRNGKey(0), frozen)
  frozen = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), frozen)
  ids, mask = text_batch(cfg.vocab_size)
  batch = {'input_ids': ids, 'attention_mask': mask}

  def loss(p):
    out = models.apply(cfg, frozen, p, batch, adapter=method)
    return jnp.mean(out['logits'].astype(jnp.float32) ** 2)

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 0
