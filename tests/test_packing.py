"""Packed rows (several examples per row, task.pack=True) give the loss and
the gradients of the same examples unpacked, for every method that can
train on them; the others are refused by name."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_prefix import checkpoints, config as config_lib, methods
from ntk_prefix.build import Setup
from ntk_prefix.data import batches, packing, pipeline
from ntk_prefix.models import layers
from ntk_prefix.steps import loss_and_metrics

# (prompt tokens, answer tokens) of each example.
SHAPES = [(5, 9), (3, 4), (7, 2), (4, 11), (2, 3), (6, 6), (3, 1)]


def _dataset(vocab, width=32, seed=0):
  rng = np.random.RandomState(seed)
  n = len(SHAPES)
  arrays = {k: np.zeros((n, width), np.int32) for k in (
      'input_ids', 'attention_mask', 'prompt_mask', 'loss_mask')}
  lengths = np.zeros(n, np.int32)
  for i, (p, a) in enumerate(SHAPES):
    arrays['input_ids'][i, :p + a] = rng.randint(3, vocab, p + a)
    arrays['attention_mask'][i, :p + a] = 1
    arrays['prompt_mask'][i, :p] = 1
    arrays['loss_mask'][i, p:p + a] = 1
    lengths[i] = p + a
  return pipeline.Dataset(arrays, lengths)


def test_first_fit_places_every_example_once_in_few_rows():
  lengths = np.array([14, 7, 9, 15, 5, 12, 4])
  rows = packing.first_fit(lengths, 32)
  assert sorted(i for r in rows for i in r) == list(range(7))
  assert all(lengths[r].sum() <= 32 for r in rows)
  assert len(rows) == 3  # 66 tokens: 3 rows of 32 is the fewest
  ds = _dataset(97)
  # 16 wide: 5 rows (80 tokens) beats 3 x 32 (96) and 2 x 64 (128); with
  # rows in pairs, 6 x 16 (96) still beats 4 x 32 (128).
  assert packing.pack(ds.arrays, ds.lengths, [16, 32, 64])[
      'input_ids'].shape == (5, 16)
  out = packing.pack(ds.arrays, ds.lengths, [16, 32, 64], row_multiple=2)
  assert out['input_ids'].shape == (6, 16)
  assert not out['segment_ids'][5].any()  # the added row is padding
  found = []  # each example intact, in one segment of one row
  for ids, seg in zip(out['input_ids'], out['segment_ids']):
    found += [tuple(ids[seg == k]) for k in range(1, seg.max() + 1)]
  assert sorted(found) == sorted(tuple(ds.arrays['input_ids'][i, :n])
                                 for i, n in enumerate(ds.lengths))
  assert out['attention_mask'].sum() == ds.lengths.sum()
  np.testing.assert_array_equal(out['segment_ids'] > 0,
                                out['attention_mask'] > 0)
  with pytest.raises(ValueError, match='40 tokens'):
    packing.pack(ds.arrays, np.array([40] + [1] * 6), [16, 32])


def test_the_search_finds_rows_first_fit_misses():
  # 8 E2E rows under SmolLM2's tokenizer (513 tokens): first fit needs 4
  # rows of 176, 3 exist (89 + 79, 77 + 57 + 42, 65 + 54 + 50).
  lengths = np.array([89, 65, 50, 77, 54, 79, 57, 42])
  assert len(packing.first_fit(lengths, 176)) == 4
  rows = packing.fewest_rows(lengths, 176)
  assert len(rows) == 3
  assert sorted(i for r in rows for i in r) == list(range(8))
  assert all(lengths[r].sum() <= 176 for r in rows)
  rng = np.random.RandomState(0)
  for _ in range(200):  # never worse than first fit, always a valid packing
    lengths = rng.randint(1, 60, size=rng.randint(1, 20))
    rows = packing.fewest_rows(lengths, 64)
    assert len(rows) <= len(packing.first_fit(lengths, 64))
    assert len(rows) >= -(-lengths.sum() // 64)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(lengths[r].sum() <= 64 for r in rows)


def test_packed_positions_restart_per_example_after_shared_tokens():
  segments = jnp.array([[-1, -1, 1, 1, 1, 2, 2, 0],
                        [1, 1, 2, 3, 3, 3, 0, 0]])
  np.testing.assert_array_equal(layers.packed_positions(segments, 3), [
      [3, 4, 5, 6, 7, 5, 6, 3], [3, 4, 3, 3, 4, 5, 3, 3]])
  mask = layers.packed_mask(segments)
  # Row 0, token 5 (example 2): the shared tokens and itself; not example 1.
  np.testing.assert_array_equal(mask[0, 5], [1, 1, 0, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(mask[1, 4], [0, 0, 0, 1, 1, 0, 0, 0])


def _perturbed(params, seed):
  """A trained-looking state: zero-initialised parts would hide a wrong
  mask (a zero prefix or LoRA delta changes nothing)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])


@pytest.mark.parametrize('family,name', [
    ('llama', m) for m in ('lora', 'prefix_tuning', 'p_tuning_v2',
                           'prompt_tuning', 'ntk_attention')] + [
    ('gpt2', 'prompt_tuning')])  # learned positions after shared tokens
def test_packed_rows_give_the_unpacked_loss_and_gradients(
    hf_checkpoint, family, name):
  path, _ = hf_checkpoint(family)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg)
  params = _perturbed(method.init(jax.random.PRNGKey(0), frozen), 1)
  setup = Setup(config_lib.base_config(), cfg, frozen, None, method, None,
                None, 'generation', None)
  ds = _dataset(cfg.vocab_size)
  plain = batches.train_batch(ds, 0, len(ds), seed=0)
  packed = batches.train_batch(ds, 0, len(ds), seed=0, pack=True)
  assert packed['input_ids'].size < plain['input_ids'].size
  assert packed['input_ids'].shape[0] < len(ds)

  def loss(p, batch):
    return loss_and_metrics({'method': p}, frozen, batch, None, s=setup,
                            train=False)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (ref, ref_sums), ref_grads = grad(params, plain)
  (out, sums), grads = grad(params, packed)
  assert float(sums['count']) == sum(a for _, a in SHAPES)
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  np.testing.assert_allclose(sums['correct'], ref_sums['correct'])
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ['lopa', 'iapt'])
def test_methods_that_read_each_example_refuse_packed_rows(hf_checkpoint,
                                                           name):
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg)
  params = method.init(jax.random.PRNGKey(0), frozen)
  setup = Setup(config_lib.base_config(), cfg, frozen, None, method, None,
                None, 'generation', None)
  packed = batches.train_batch(_dataset(cfg.vocab_size), 0, 7, seed=0,
                                pack=True)
  with pytest.raises(ValueError, match=f"method '{name}'.*task.pack=False"):
    loss_and_metrics({'method': params}, frozen, packed, None, s=setup,
                     train=False)


def test_classification_data_is_not_packed():
  ds = pipeline.Dataset({'input_ids': np.ones((4, 8), np.int32),
                         'attention_mask': np.ones((4, 8), np.int32),
                         'labels': np.zeros(4, np.int32)}, np.full(4, 8))
  with pytest.raises(ValueError, match='task.pack=False'):
    batches.train_batch(ds, 0, 4, seed=0, pack=True)


def test_a_packed_run_logs_the_unpacked_losses(hf_checkpoint, prepared_dir,
                                              tmp_path):
  """task.pack=True end to end (rows a multiple of the data axis): the same
  training losses, step by step, as the unpacked run."""
  from conftest import losses, tiny_config
  from ntk_prefix import train
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  tok = checkpoints.load_tokenizer(checkpoints.default_decoder_path())
  tok.save_pretrained(path)
  runs = {}
  for pack in (False, True):
    c = tiny_config(path, prepared_dir, total_steps=3, eval_every=3, **{
        'task.name': 'gsm8k', 'task.eval_split': 'test',
        'task.max_length': 96, 'task.train_limit': 16, 'task.eval_limit': 4,
        'method.name': 'p_tuning_v2', 'mesh.data': 2, 'task.pack': pack,
        'best_metric': 'eval_token_accuracy'})
    train.train_and_evaluate(c, str(tmp_path / str(pack)))
    runs[pack] = losses(str(tmp_path / str(pack)))
  np.testing.assert_allclose(runs[True], runs[False], rtol=1e-5)


def test_a_packed_config_on_an_encoder_or_lopa_is_refused_before_any_work(
    hf_checkpoint, prepared_dir):
  from conftest import tiny_config
  from ntk_prefix import build
  c = tiny_config(hf_checkpoint('bert')[0], prepared_dir,
                  **{'task.pack': True})
  with pytest.raises(ValueError, match='is a bert model.*task.pack=False'):
    build.build(c)
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  c = tiny_config(path, prepared_dir, **{
      'task.pack': True, 'task.name': 'gsm8k', 'method.name': 'lopa',
      'best_metric': 'eval_loss'})
  with pytest.raises(ValueError, match="method.name='lopa'"):
    build.build(c)
