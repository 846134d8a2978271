"""Every method against an independent reference or an exact identity."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import reference
from conftest import text_batch
from ntk_prefix import checkpoints, methods, models
from ntk_prefix.methods import base


def _load(hf_checkpoint, family):
  path, model = hf_checkpoint(family)
  cfg, frozen, head = checkpoints.load(path)
  return cfg, frozen, model


def _batch(cfg, **kw):
  if cfg.is_vision:
    return {'pixel_values': np.random.RandomState(0).randn(
        2, 3, cfg.image_size, cfg.image_size).astype(np.float32)}
  ids, mask = text_batch(cfg.vocab_size, **kw)
  return {'input_ids': ids, 'attention_mask': mask}


def _out(cfg, frozen, method_params, batch, method):
  out = models.apply(cfg, frozen, method_params, batch, adapter=method)
  return out['logits'] if cfg.is_decoder else out['hidden']


@pytest.mark.parametrize('family', ['bert', 'llama'])
@pytest.mark.parametrize('name,options', [
    ('ntk_attention', {'init': 'zeros'}),
    ('lora', {'targets': ('query', 'key', 'value', 'out')}),
    ('full', {}), ('none', {})])
def test_identity_at_init(hf_checkpoint, family, name, options):
  cfg, frozen, _ = _load(hf_checkpoint, family)
  batch = _batch(cfg)
  plain = _out(cfg, frozen, {}, batch, models.NO_ADAPTER)
  method = methods.get(name, cfg, options)
  params = method.init(jax.random.PRNGKey(0), frozen)
  np.testing.assert_array_equal(
      np.asarray(_out(cfg, frozen, params, batch, method)), np.asarray(plain))


def test_ntk_attention_model_equals_numpy_layer(hf_checkpoint):
  """One real layer: our model's layer 0 attention = the NumPy formula."""
  cfg, frozen, _ = _load(hf_checkpoint, 'llama')
  method = methods.get('ntk_attention', cfg, {'init': 'normal',
                                              'init_std': 0.5})
  params = method.init(jax.random.PRNGKey(1))
  batch = _batch(cfg)
  from ntk_prefix.models import layers
  x = np.random.RandomState(0).randn(3, 9, cfg.hidden_size).astype(np.float32)
  mask = batch['attention_mask']
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  hook = method.layer_hook(method.layer_state(params), 0, x, mask, False,
                           None)
  attn = layers.SelfAttention(cfg)
  p = frozen['layer_0']['attn']
  ours = attn.apply({'params': p}, x, mask, pos, hook, None)
  # Reference: project, rotate, attend (NumPy), project out.
  def proj(name, a):
    return a @ p[name]['dense']['kernel']
  b, t = mask.shape
  q = proj('query', x).reshape(b, t, cfg.num_heads, cfg.head_dim)
  k = proj('key', x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  v = proj('value', x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  q = np.asarray(layers.rope(q, pos, cfg.rope_theta))
  k = np.asarray(layers.rope(k, pos, cfg.rope_theta))
  ctx = reference.attention(q, k, v, mask, True, ntk_z=params['z'][0],
                            ntk_k=params['k'][0]).reshape(b, t, -1)
  ref = ctx @ p['out']['dense']['kernel']
  m = mask[..., None] > 0
  np.testing.assert_allclose(np.where(m, ours, 0), np.where(m, ref, 0),
                             rtol=1e-4, atol=1e-4)


def _hf_gpt2_with_prefix(model, batch, k, v):
  """HF GPT-2 fed the prefix as past_key_values. k, v: [L, m, heads, d]."""
  from transformers import DynamicCache
  cache = DynamicCache(config=model.config)
  for layer in range(k.shape[0]):
    kt = torch.tensor(np.asarray(k[layer]))[None].transpose(1, 2)
    vt = torch.tensor(np.asarray(v[layer]))[None].transpose(1, 2)
    b = batch['input_ids'].shape[0]
    cache.update(kt.expand(b, -1, -1, -1).contiguous(),
                 vt.expand(b, -1, -1, -1).contiguous(), layer)
  m = k.shape[1]
  mask = np.concatenate([np.ones((batch['input_ids'].shape[0], m), np.int64),
                         batch['attention_mask']], 1)
  with torch.no_grad():
    return model(input_ids=torch.tensor(batch['input_ids'], dtype=torch.long),
                 attention_mask=torch.tensor(mask), past_key_values=cache,
                 use_cache=True).logits.numpy()


@pytest.mark.parametrize('name', ['p_tuning_v2', 'prefix_tuning'])
def test_prefix_methods_equal_hf_gpt2_past_key_values(hf_checkpoint, name):
  cfg, frozen, model = _load(hf_checkpoint, 'gpt2')
  method = methods.get(name, cfg, {'length': 4})
  params = method.init(jax.random.PRNGKey(0))
  if name == 'p_tuning_v2':  # make the prefix matter
    params = jax.tree.map(lambda a: 50 * a, params)
    kv = params
  else:
    kv = method.materialize(params)
  batch = _batch(cfg)
  ours = _out(cfg, frozen, params, batch, method)
  ref = _hf_gpt2_with_prefix(model, batch, kv['k'], kv['v'])
  plain = _out(cfg, frozen, {}, batch, models.NO_ADAPTER)
  m = batch['attention_mask'][..., None] > 0
  assert np.abs(np.where(m, ref - plain, 0)).max() > 1e-3  # prefix matters
  np.testing.assert_allclose(np.where(m, ours, 0), np.where(m, ref, 0),
                             atol=1e-4)


def test_p_tuning_v2_equals_numpy_concatenation(hf_checkpoint):
  """Layer-level: the prefix enters as extra keys/values, nothing else."""
  cfg, frozen, _ = _load(hf_checkpoint, 'llama')
  method = methods.get('p_tuning_v2', cfg, {'length': 3})
  params = method.init(jax.random.PRNGKey(2))
  params = jax.tree.map(lambda a: 30 * a, params)
  from ntk_prefix.models import layers
  x = np.random.RandomState(1).randn(2, 5, cfg.hidden_size).astype(np.float32)
  mask = np.ones((2, 5), np.int32)
  pos = np.arange(5)[None].repeat(2, 0)
  hook = method.layer_hook(method.layer_state(params), 1, x, mask, False,
                           None)
  p = frozen['layer_1']['attn']
  ours = layers.SelfAttention(cfg).apply({'params': p}, x, mask, pos, hook,
                                         None)
  proj = lambda n, a, h: (a @ p[n]['dense']['kernel']).reshape(2, 5, h, -1)
  q = np.asarray(layers.rope(proj('query', x, cfg.num_heads), pos,
                             cfg.rope_theta))
  k = np.asarray(layers.rope(proj('key', x, cfg.num_kv_heads), pos,
                             cfg.rope_theta))
  v = proj('value', x, cfg.num_kv_heads)
  # Explicit concatenation along the key axis, causal only among inputs.
  ctx = reference.attention(q, k, v, mask, True, np.asarray(params['k'][1:2]),
                            np.asarray(params['v'][1:2]))
  ref = ctx.reshape(2, 5, -1) @ p['out']['dense']['kernel']
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_prefix_tuning_materialize_shapes_follow_kv_heads(hf_checkpoint):
  cfg, frozen, _ = _load(hf_checkpoint, 'llama')
  method = methods.get('prefix_tuning', cfg, {'length': 7, 'mlp_hidden': 16})
  mat = method.materialize(method.init(jax.random.PRNGKey(0)))
  assert mat['k'].shape == (cfg.num_layers, 7, cfg.num_kv_heads, cfg.head_dim)
  assert cfg.num_kv_heads != cfg.num_heads


def test_prefix_tuning_word_init_fits_real_activations(hf_checkpoint):
  cfg, frozen, _ = _load(hf_checkpoint, 'gpt2')

  class Tok:  # a two-token "word"
    def __call__(self, text, add_special_tokens=False):
      return {'input_ids': [5, 9]}

  method = methods.get('prefix_tuning', cfg, {
      'length': 4, 'init': 'words', 'init_fit_steps': 400, 'mlp_hidden': 64})
  params = method.init(jax.random.PRNGKey(0), frozen, Tok())
  target_k, target_v = base.word_prefix(cfg, frozen, Tok(), 'x', 4)
  mat = method.materialize(params)
  rel = np.linalg.norm(mat['k'] - target_k) / np.linalg.norm(target_k)
  assert rel < 0.1, rel


def test_ntk_conversion_approximates_prefix_attention():
  """Z, k from an explicit prefix: error falls as the feature map improves
  (more random features), and the state's size does not depend on m."""
  from ntk_prefix.models.config import ModelConfig
  from ntk_prefix.models import attention
  from ntk_prefix.models.hooks import NtkState
  d, m = 8, 512
  cfg = ModelConfig(family='gpt2', hidden_size=16, num_layers=1, num_heads=2,
                    num_kv_heads=2, head_dim=d, intermediate_size=8,
                    max_positions=8)
  rng = np.random.RandomState(0)
  pk = 0.5 * rng.randn(1, m, 2, d).astype(np.float32)
  pv = rng.randn(1, m, 2, d).astype(np.float32)
  q = 0.5 * rng.randn(1, 6, 2, d).astype(np.float32)
  # Queries that see only the prefix: the input key is masked out.
  k_in = np.zeros((1, 6, 2, d), np.float32)
  mask = np.zeros((1, 6), np.int32)
  exact = reference.attention(q, k_in, k_in, mask, False, pk, pv)
  errors = []
  for features in (4, 64, 2048):
    errs = []
    for seed in range(3):
      method = methods.get('ntk_attention', cfg, {
          'feature_map': 'random', 'num_features': features,
          'feature_seed': seed})
      state = method.state_from_prefix(pk, pv)
      assert state['z'].shape == (1, 2, features, d)  # no m anywhere
      out = attention.attend(q, k_in, k_in, key_mask=mask, causal=False,
                             ntk=NtkState(state['z'][0], state['k'][0],
                                          method.projection()))
      errs.append(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    errors.append(np.mean(errs))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 0.05, errors


def test_ntk_attention_cost_independent_of_prefix_length(hf_checkpoint):
  """FLOPs of a forward pass: flat for NTK-Attention, growing for prefixes."""
  cfg, frozen, _ = _load(hf_checkpoint, 'gpt2')
  batch = _batch(cfg)

  def flops(name, options):
    method = methods.get(name, cfg, options)
    params = method.init(jax.random.PRNGKey(0))
    fn = jax.jit(lambda p: _out(cfg, frozen, p, batch, method))
    return fn.lower(params).compile().cost_analysis()['flops']

  frozen_flops = flops('none', {})
  ntk = flops('ntk_attention', {'init': 'prefix', 'init_prefix_length': 4096})
  # Up to PREFIX_CHUNK rows a prefix is attended whole; longer ones run in a
  # loop whose body XLA's cost analysis counts once, so compare below it.
  prefix = [flops('p_tuning_v2', {'length': m, 'shift_positions': False})
            for m in (8, 128)]
  # Each extra prefix row costs q.k and p.v for every query of every layer.
  b, t = batch['input_ids'].shape
  extra = 2 * 2 * b * t * (128 - 8) * cfg.hidden_size * cfg.num_layers
  assert prefix[1] - prefix[0] >= 0.9 * extra
  # NTK-Attention summarises a 4096-row prefix for phi(q) Z and phi(q) k per
  # query and head (plus the feature map): a few times that, never m rows.
  d = cfg.head_dim
  summary = 2 * b * t * cfg.num_heads * (d * d + d) * cfg.num_layers
  assert 0 < ntk - frozen_flops <= 4 * summary, (ntk - frozen_flops, summary)
  assert ntk - frozen_flops < (prefix[1] - prefix[0]) / 4


ALL = list(methods.ADAPTING)  # every registered method, plugins included


@pytest.mark.parametrize('family', ['bert', 'llama'])
@pytest.mark.parametrize('name', ALL)
def test_gradients_only_for_method_state(hf_checkpoint, family, name):
  cfg, frozen, _ = _load(hf_checkpoint, family)
  method = methods.get(name, cfg)
  params = {'method': method.init(jax.random.PRNGKey(0), frozen)}
  if not cfg.is_decoder:
    params['head'] = models.init_classifier_head(jax.random.PRNGKey(1), cfg, 2)
  batch = _batch(cfg)

  def loss(trainable, frozen_params):
    out = models.apply(cfg, frozen_params, trainable['method'], batch,
                       adapter=method, train=True, rng=jax.random.PRNGKey(3))
    y = out['logits'] if cfg.is_decoder else models.classifier_logits(
        trainable['head'], out['pooled'])
    return jnp.mean(y ** 2)

  # argnums=0: the method state only. Compiled: op by op is slower here.
  grads = jax.jit(jax.grad(loss))(params, frozen)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  nonzero = [float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(
      grads['method'])]
  assert any(nonzero) or name == 'none'
  # The training optimizer's state holds Adam's two moments of the method
  # state (a third copy when accumulating gradients) and nothing more.
  from ntk_prefix import config as config_lib
  from ntk_prefix.optimizer import make_optimizer
  n = methods.count_params(params)
  for accumulate, copies in ((1, 2), (2, 3)):
    c = config_lib.base_config()
    c.optimizer.accumulate_steps = accumulate
    opt, _ = make_optimizer(c, method.no_decay)
    opt_state = opt.init(params)
    arrays = [x for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
    assert sum(int(np.prod(x.shape)) for x in arrays) == copies * n
  # One update leaves the frozen tree untouched (it is never an argument).
  updates, _ = opt.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  assert jax.tree.structure(new) == jax.tree.structure(params)


@pytest.mark.parametrize('name', ALL)
def test_gqa_shapes_and_bfloat16(hf_checkpoint, name):
  cfg, frozen, _ = _load(hf_checkpoint, 'llama')
  method = methods.get(name, cfg)
  params = method.init(jax.random.PRNGKey(0), frozen)
  frozen_bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), frozen)
  params_bf16 = params
  if name == 'full':
    params_bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  out = models.apply(cfg, frozen_bf16, params_bf16, _batch(cfg), adapter=method)
  assert out['logits'].shape == (3, 9, cfg.vocab_size)
  assert out['hidden'].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out['logits'], np.float32)))


@pytest.mark.parametrize('name,options,match', [
    ('ntk_atention', {}, "Did you mean \\['ntk_attention'\\]"),
    ('lora', {'rnk': 4}, 'method.lora.rnk is not an option.*rank'),
    ('p_tuning_v2', {'length': 0}, 'method.p_tuning_v2.length=0'),
    ('prefix_tuning', {'length': 64}, 'positions'),
    ('lora', {'rank': 1000}, 'method.lora.rank=1000 is not allowed: 1..32'),
    ('lopa', {'rank': 11}, 'method.lopa.rank=11'),
    ('ntk_attention', {'feature_map': 'relu'}, 'feature_map'),
])
def test_bad_options_are_clear_errors(hf_checkpoint, name, options, match):
  cfg, _, _ = _load(hf_checkpoint, 'bert')
  with pytest.raises(methods.MethodError, match=match):
    methods.get(name, cfg, options)


def test_state_from_another_model_is_a_clear_error(hf_checkpoint):
  bert, _, _ = _load(hf_checkpoint, 'bert')
  llama, _, _ = _load(hf_checkpoint, 'llama')
  trained = methods.get('ntk_attention', bert).init(jax.random.PRNGKey(0))
  with pytest.raises(methods.MethodError, match='other dimensions'):
    methods.get('ntk_attention', llama).check_params(trained)


def test_parameter_table_command(hf_checkpoint):
  from ntk_prefix.methods.__main__ import table
  path, _ = hf_checkpoint('bert')
  text = table(path, 2)
  for name in ALL:
    assert f'| {name} |' in text
  # NTK-Attention: layers * heads * (d*d + d) = 2 * 4 * (64 + 8)
  assert '| ntk_attention | 576 |' in text


@pytest.mark.parametrize('name', ['iapt', 'lopa'])
def test_input_conditioned_methods_never_see_the_answer(hf_checkpoint, name):
  """With a prompt_mask, IAPT's generators and LoPA's instance embedding read
  the instruction only: changing the answer tokens leaves every logit of the
  instruction positions unchanged (a causal decoder hides them otherwise)."""
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg)
  params = method.init(jax.random.PRNGKey(0), frozen)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  ids, mask = text_batch(cfg.vocab_size, batch=2, length=9, seed=1)
  mask[:] = 1
  prompt_mask = np.zeros_like(mask)
  prompt_mask[:, :5] = 1
  other = ids.copy()
  other[:, 5:] = (ids[:, 5:] + 7) % cfg.vocab_size

  def logits(tokens, condition):
    inputs = {'input_ids': tokens, 'attention_mask': mask}
    if condition is not None:
      inputs['prompt_mask'] = condition
    return np.asarray(models.apply(cfg, frozen, params, inputs,
                                   adapter=method)['logits'])

  n = 5  # the instruction positions
  np.testing.assert_array_equal(logits(ids, prompt_mask)[:, :n],
                                logits(other, prompt_mask)[:, :n])
  # Without the mask they may condition on the answer, and do.
  assert not np.array_equal(logits(ids, None)[:, :n],
                            logits(other, None)[:, :n])


def test_a_prefix_longer_than_the_position_table_keeps_positions():
  """Prefix-length sweeps give every explicit-prefix method m rows with the
  input's positions unshifted, so m may exceed the model's positions."""
  from ntk_prefix.models.config import ModelConfig
  cfg = ModelConfig(family='bert', hidden_size=16, num_layers=1, num_heads=2,
                    num_kv_heads=2, head_dim=8, intermediate_size=8,
                    max_positions=512)
  for name in methods.PREFIX_METHODS:
    options = methods.prefix_length_options(name, 1024)
    assert options['shift_positions'] is False
    method = methods.get(name, cfg, options)
    assert method.position_offset() == 0
    with pytest.raises(methods.MethodError, match='positions'):
      methods.get(name, cfg, {**options, 'shift_positions': True})
