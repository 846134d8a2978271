"""The LM loss at the gathered loss positions, in chunks, equals the loss
over full [batch, length, vocab] logits: loss, metrics and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntk_prefix import checkpoints, config as config_lib, lm_loss, methods
from ntk_prefix import models
from ntk_prefix.build import Setup
from ntk_prefix.data import batches, pipeline
from ntk_prefix.steps import loss_and_metrics


def _batch(vocab, b=4, t=12, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, size=(b, t)).astype(np.int32)
  attention = np.ones((b, t), np.int32)
  loss_mask = np.zeros((b, t), np.int32)
  for i, (prompt, length) in enumerate([(4, 12), (6, 10), (3, 7), (5, 5)]):
    attention[i, length:] = 0
    loss_mask[i, prompt:length] = 1  # row 3: a prompt with no answer left
  weights = np.array([1, 1, 1, 0], np.float32)  # the last row is padding
  batch = {'input_ids': ids, 'attention_mask': attention,
           'loss_mask': loss_mask, 'weights': weights}
  batch.update(batches.loss_positions(ids, loss_mask, 16))
  return batch


def _reference(cfg, frozen, params, method, batch):
  """The full-logits loss the training code computed before."""
  inputs = {'input_ids': batch['input_ids'],
            'attention_mask': batch['attention_mask']}
  logits = models.apply(cfg, frozen, params, inputs, adapter=method)[
      'logits'][:, :-1].astype(jnp.float32)
  targets = batch['input_ids'][:, 1:]
  mask = batch['loss_mask'][:, 1:] * batch['weights'][:, None]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets) * mask
  return jnp.sum(nll * mask) / jnp.sum(mask), {
      'loss_sum': jnp.sum(nll * mask), 'correct': jnp.sum(correct),
      'count': jnp.sum(mask)}


@pytest.mark.parametrize('family', ['llama', 'gpt2'])  # untied, tied head
@pytest.mark.parametrize('name', ['ntk_attention', 'lora', 'full'])
def test_gathered_chunked_loss_equals_full_logits(hf_checkpoint, family,
                                                  name):
  path, _ = hf_checkpoint(family)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg)
  params = method.init(jax.random.PRNGKey(0), frozen)
  batch = _batch(cfg.vocab_size)
  setup = Setup(config_lib.base_config(), cfg, frozen, None, method,
                      None, None, 'generation', None)

  def ours(p):
    return loss_and_metrics({'method': p}, frozen, batch, None,
                                  s=setup, train=False)

  (loss, sums), grads = jax.jit(jax.value_and_grad(ours, has_aux=True))(
      params)
  (ref_loss, ref_sums), ref_grads = jax.jit(jax.value_and_grad(
      lambda p: _reference(cfg, frozen, p, method, batch),
      has_aux=True))(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for k in ref_sums:
    np.testing.assert_allclose(sums[k], ref_sums[k], rtol=1e-6, err_msg=k)
  assert float(sums['count']) == 8 + 4 + 4  # rows 0-2; padding weighs 0
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_cross_entropy_chunks_equal_one_pass():
  rng = np.random.RandomState(0)
  h = jnp.asarray(rng.randn(11, 8), jnp.float32)
  kernel = jnp.asarray(rng.randn(8, 50), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 50, 11))
  w = jnp.asarray(rng.rand(11), jnp.float32)  # any cotangent per position

  def full_loss(h, kernel):
    return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(
        h @ kernel, targets))

  full = optax.softmax_cross_entropy_with_integer_labels(h @ kernel, targets)
  full_grads = jax.grad(full_loss, argnums=(0, 1))(h, kernel)
  for chunk in (1, 3, 4, 11, 64):  # remainders, one chunk, larger than n
    nll, correct = lm_loss.cross_entropy(h, kernel, targets, chunk=chunk)
    np.testing.assert_allclose(nll, full, rtol=1e-6)
    np.testing.assert_array_equal(
        correct, jnp.argmax(h @ kernel, -1) == targets)
    # The gradient in h is formed in the forward pass, the head's in the
    # backward pass: both equal autodiff of the one-pass loss.
    grads = jax.jit(jax.grad(lambda h, k: jnp.sum(w * lm_loss.cross_entropy(
        h, k, targets, chunk=chunk)[0]), argnums=(0, 1)))(h, kernel)
    for g, r in zip(grads, full_grads):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_loss_slots_pad_at_most_a_third():
  # A batch whose longest answer has 70 tokens gets 96 slots per row (the
  # powers of two alone gave 128: 45% of the head's rows padding).
  rng = np.random.RandomState(0)
  n, width = 4, 128
  arrays = {'input_ids': rng.randint(3, 50, (n, width)).astype(np.int32),
            'attention_mask': np.ones((n, width), np.int32),
            'loss_mask': np.zeros((n, width), np.int32)}
  for i, answer in enumerate([70, 20, 45, 3]):
    arrays['loss_mask'][i, width - answer:] = 1
  ds = pipeline.Dataset(arrays, np.full(n, width))
  batch = batches.train_batch(ds, 0, n, seed=0)
  assert batch['loss_positions'].shape == (n, 96)
  assert batch['loss_weights'].sum() == 70 + 20 + 45 + 3


def test_loss_positions_are_the_answer_tokens():
  ids = np.arange(20, dtype=np.int32).reshape(2, 10)
  loss_mask = np.zeros((2, 10), np.int32)
  loss_mask[0, 6:9] = 1
  out = batches.loss_positions(ids, loss_mask, 4)
  # Position p predicts token p + 1: the answer tokens 6, 7, 8.
  np.testing.assert_array_equal(out['loss_positions'][0], [5, 6, 7, 0])
  np.testing.assert_array_equal(out['loss_targets'][0], [6, 7, 8, 0])
  np.testing.assert_array_equal(out['loss_weights'], [[1, 1, 1, 0],
                                                      [0, 0, 0, 0]])
