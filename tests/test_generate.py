"""KV-cache decoding with method state equals full forward passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import text_batch
from ntk_prefix import checkpoints, generate, methods, models

METHODS = ['none'] + list(methods.ADAPTING)
# Nonzero states where a method's default starts at the frozen model, so
# the comparisons below see each method's term.
OPTIONS = {'ntk_attention': {'init': 'normal', 'init_std': 0.1},
           'prefix_tuning': {'length': 3}, 'p_tuning_v2': {'length': 3},
           'prompt_tuning': {'length': 2, 'init': 'normal'},
           'lopa': {'length': 2, 'rank': 1}, 'iapt': {'num_tokens': 2}}


def _setup(hf_checkpoint, family, name):
  path, _ = hf_checkpoint(family)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg, OPTIONS.get(name, {}))
  params = method.init(jax.random.PRNGKey(0), frozen)
  # Away from any zero initialisation, so every piece of state matters.
  noise = lambda x, k: x + 0.05 * jax.random.normal(k, x.shape)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), max(len(leaves), 1))
  params = jax.tree.unflatten(tree, [noise(x, k) for x, k in zip(leaves, keys)])
  return cfg, frozen, method, params


def _full_logits(cfg, frozen, method, params, ids, mask, prompt_mask):
  inputs = {'input_ids': ids, 'attention_mask': mask,
            'prompt_mask': prompt_mask}
  return np.asarray(models.apply(cfg, frozen, params, inputs,
                                 adapter=method)['logits'])


@pytest.mark.parametrize('family', ['llama', 'gpt2'])
@pytest.mark.parametrize('name', METHODS)
def test_cached_decoding_equals_full_forward(hf_checkpoint, family, name):
  cfg, frozen, method, params = _setup(hf_checkpoint, family, name)
  if name == 'iapt' and family == 'gpt2':
    pytest.skip('covered on llama')
  ids, mask = text_batch(cfg.vocab_size, batch=3, length=7, seed=2,
                         pad_right=False)
  steps = 4
  decoder = generate.Decoder(cfg, frozen, method, params)
  out = generate.generate(decoder, ids, mask, steps)
  full_ids = np.concatenate([ids, out['tokens']], 1)
  full_mask = np.concatenate([mask, np.ones_like(out['tokens'])], 1)
  prompt_mask = np.concatenate([mask, np.zeros_like(out['tokens'])], 1)
  want = _full_logits(cfg, frozen, method, params, full_ids, full_mask,
                      prompt_mask)[:, ids.shape[1] - 1:-1]
  np.testing.assert_allclose(out['logits'], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out['tokens'], np.argmax(want, -1))


def test_beam_search_scores_its_own_sequence(hf_checkpoint):
  cfg, frozen, method, params = _setup(hf_checkpoint, 'llama',
                                       'ntk_attention')
  ids, mask = text_batch(cfg.vocab_size, batch=2, length=6, seed=3,
                         pad_right=False)
  decoder = generate.Decoder(cfg, frozen, method, params)
  greedy = generate.generate(decoder, ids, mask, 5)
  one = generate.beam_search(decoder, ids, mask, 5, beams=1)
  np.testing.assert_array_equal(one['tokens'], greedy['tokens'])
  beams = generate.beam_search(decoder, ids, mask, 5, beams=4,
                               length_penalty=0.0)
  full_ids = np.concatenate([ids, beams['tokens']], 1)
  full_mask = np.concatenate([mask, np.ones_like(beams['tokens'])], 1)
  prompt_mask = np.concatenate([mask, np.zeros_like(beams['tokens'])], 1)
  logits = _full_logits(cfg, frozen, method, params, full_ids, full_mask,
                        prompt_mask)
  logp = jax.nn.log_softmax(jnp.asarray(logits[:, ids.shape[1] - 1:-1]), -1)
  score = np.take_along_axis(np.asarray(logp), beams['tokens'][..., None],
                             -1)[..., 0].sum(1)
  np.testing.assert_allclose(beams['scores'], score, rtol=1e-4, atol=1e-4)
  greedy_logp = jax.nn.log_softmax(jnp.asarray(greedy['logits']), -1)
  greedy_score = np.take_along_axis(
      np.asarray(greedy_logp), greedy['tokens'][..., None], -1)[..., 0].sum(1)
  assert np.all(beams['scores'] >= greedy_score - 1e-4)


def test_nucleus_of_one_token_is_greedy(hf_checkpoint):
  cfg, frozen, method, params = _setup(hf_checkpoint, 'llama', 'p_tuning_v2')
  ids, mask = text_batch(cfg.vocab_size, batch=2, length=5, seed=4,
                         pad_right=False)
  decoder = generate.Decoder(cfg, frozen, method, params)
  greedy = generate.generate(decoder, ids, mask, 4)
  sampled = generate.generate(decoder, ids, mask, 4, temperature=0.8,
                              top_p=1e-6, rng=jax.random.PRNGKey(5))
  np.testing.assert_array_equal(sampled['tokens'], greedy['tokens'])
  wide = generate.generate(decoder, ids, mask, 4, temperature=5.0,
                           rng=jax.random.PRNGKey(5))
  assert wide['tokens'].shape == (2, 4)


def test_too_long_generation_is_a_clear_error(hf_checkpoint):
  cfg, frozen, method, params = _setup(hf_checkpoint, 'gpt2', 'p_tuning_v2')
  ids, mask = text_batch(cfg.vocab_size, batch=1, length=5)
  decoder = generate.Decoder(cfg, frozen, method, params)
  with pytest.raises(ValueError, match='max_new_tokens'):
    generate.generate(decoder, ids, mask, 1000)


def test_generate_command_needs_a_trained_run(tmp_path):
  with pytest.raises(SystemExit, match='config.json'):
    generate.main(['--workdir', str(tmp_path), '--prompt', 'hi'])


@pytest.mark.parametrize('name', METHODS[1:])
def test_remat_gives_the_same_gradients(hf_checkpoint, name):
  """Gradient checkpointing (every policy) with every method: same grads."""
  cfg, frozen, method, params = _setup(hf_checkpoint, 'llama', name)
  ids, mask = text_batch(cfg.vocab_size, batch=2, length=6, seed=5)
  inputs = {'input_ids': ids, 'attention_mask': mask}

  def loss(p, remat):
    out = models.apply(cfg, frozen, p, inputs, adapter=method, remat=remat)
    return jnp.mean(out['logits'] ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  want = grad(params, '')
  for policy in ('full', 'dots', 'dots_no_batch'):
    got = grad(params, policy)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('name', ['p_tuning_v2', 'prefix_tuning',
                                  'ntk_attention', 'prompt_tuning'])
def test_mixed_batch_rows_equal_their_own_adapter(hf_checkpoint, name):
  from ntk_prefix.methods.mixed import Mixed
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg, OPTIONS.get(name, {}))
  states = []
  for seed in range(3):
    p = method.init(jax.random.PRNGKey(seed), frozen)
    states.append(jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(9 + seed),
                                               x.shape), p))
  mixed = Mixed(method)
  rows = np.array([2, 0, 1, 2])
  ids, mask = text_batch(cfg.vocab_size, batch=4, length=6, seed=6,
                         pad_right=False)
  together = models.apply(cfg, frozen, {'adapters': mixed.stack(states),
                                        'row_adapter': jnp.asarray(rows)},
                          {'input_ids': ids, 'attention_mask': mask},
                          adapter=mixed)['logits']
  for i, a in enumerate(rows):
    alone = models.apply(cfg, frozen, states[a],
                         {'input_ids': ids[i:i + 1],
                          'attention_mask': mask[i:i + 1]},
                         adapter=method)['logits']
    np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-5)
