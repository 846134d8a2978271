"""The jitted, sharded steps of a run: the loss, the train step over the
method state alone, the eval step and the exact eval over a split."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ntk_prefix import distributed, lm_loss, models, sharding
from ntk_prefix.build import Setup
from ntk_prefix.data import batches


def loss_and_metrics(trainable, frozen_params, batch, rng, *, s: Setup,
                     train: bool):
  """Mean loss over real examples/tokens, plus sums for exact eval metrics.
  trainable: {'method': method state, 'head': task head (classification)}."""
  method_params = trainable['method']
  inputs = {k: v for k, v in batch.items()
            if k not in ('labels', 'weights', 'loss_mask', 'loss_positions',
                         'loss_targets', 'loss_weights')}
  out = models.apply(s.model_cfg, frozen_params, method_params, inputs,
                     adapter=s.method, train=train, rng=rng,
                     remat=s.config.model.remat, lm_logits=False,
                     attention_impl=s.config.model.attention_impl,
                     scan_layers=s.config.model.scan_layers)
  weights = batch.get('weights')
  if s.kind == 'generation':  # the LM head at the loss positions only
    h = lm_loss.gather_rows(out['hidden'], batch['loss_positions'])
    params = s.method.backbone_params(frozen_params, method_params)
    nll, correct = lm_loss.cross_entropy(
        h.reshape(-1, h.shape[-1]), lm_loss.head_kernel(s.model_cfg, params),
        batch['loss_targets'].reshape(-1))
    mask = batch['loss_weights']
    if weights is not None:
      mask = mask * weights[:, None]
    mask = mask.reshape(-1)
    count = jnp.sum(mask)
    loss = jnp.sum(nll * mask) / jnp.maximum(count, 1.0)
    return loss, {'loss_sum': jnp.sum(nll * mask),
                  'correct': jnp.sum(correct * mask), 'count': count}
  logits = models.classifier_logits(trainable['head'], out['pooled'])
  w = jnp.ones(logits.shape[0]) if weights is None else weights
  nll = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                        batch['labels'])
  correct = (jnp.argmax(logits, -1) == batch['labels']) * w
  loss = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
  return loss, {'loss_sum': jnp.sum(nll * w), 'correct': jnp.sum(correct),
                'count': jnp.sum(w)}


def place_frozen(s: Setup):
  """(frozen params in config.model.dtype laid out on the mesh, their
  shardings): what every step reads."""
  dtype = jnp.bfloat16 if s.config.model.dtype == 'bfloat16' else jnp.float32
  params = s.frozen_params
  if s.config.model.scan_layers:  # stacked once here, not in every step
    params = models.stack_layers(params, s.model_cfg.num_layers)
  frozen_sharding = sharding.frozen_shardings(
      params, s.config.sharding.frozen_rules, s.mesh)
  # Each process converts and places only the shards its devices hold.
  frozen = jax.tree.map(
      lambda x, sh: jax.make_array_from_callback(
          np.shape(x), sh, lambda idx: np.asarray(x[idx], dtype)),
      params, frozen_sharding)
  return frozen, frozen_sharding


def make_eval_step(s: Setup, frozen_sharding):
  """The jitted eval step: sums of loss, correct and count over a batch."""
  def eval_step(trainable, frozen_params, batch):
    _, sums = loss_and_metrics(trainable, frozen_params, batch, None, s=s,
                               train=False)
    return sums

  return jax.jit(eval_step,
                 in_shardings=(NamedSharding(s.mesh, P()), frozen_sharding,
                               NamedSharding(s.mesh, P('data'))),
                 out_shardings=NamedSharding(s.mesh, P()))


def make_steps(s: Setup, opt, frozen_sharding):
  """The jitted train and eval steps with explicit shardings. The train step
  takes the step's learning rate as an argument (`make_optimizer`'s
  updates are for a rate of 1), so a sweep compiles it once."""
  replicated = NamedSharding(s.mesh, P())
  batch_sharding = NamedSharding(s.mesh, P('data'))

  def train_step(trainable, opt_state, frozen_params, batch, rng,
                 learning_rate):
    (loss, _), grads = jax.value_and_grad(
        loss_and_metrics, has_aux=True)(trainable, frozen_params, batch,
                                        rng, s=s, train=True)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    # Cast as optax casts a schedule's value: to each update's dtype.
    updates = jax.tree.map(lambda u: u * learning_rate.astype(u.dtype),
                           updates)
    trainable = optax.apply_updates(trainable, updates)
    # Loss and gradients come from the state before the update; the state
    # about to be saved is checked too (a finite step can overflow it).
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves(trainable)]))
    return trainable, opt_state, {'train_loss': loss,
                                      'grad_norm': optax.tree.norm(grads),
                                      'state_finite': finite}

  train = jax.jit(
      train_step,
      in_shardings=(replicated, replicated, frozen_sharding, batch_sharding,
                    replicated, replicated),
      out_shardings=(replicated, replicated, replicated),
      donate_argnums=(0, 1))
  return train, make_eval_step(s, frozen_sharding)


def batch_sharding(s: Setup):
  return NamedSharding(s.mesh, P('data'))


def run_eval(s: Setup, evaluate, trainable, frozen_params,
             ds=None) -> dict:
  """Exact sums over the whole split (padding rows weigh 0), whatever the
  number of processes: each feeds its rows of every batch."""
  total = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  ds = s.eval_ds if ds is None else ds
  n = s.config.eval_batch_size
  rows = distributed.local_rows(batch_sharding(s), n)
  for local in batches.eval_batches(ds, n, rows):
    batch = distributed.global_batch(local, batch_sharding(s), n)
    sums = distributed.fetch(evaluate(trainable, frozen_params, batch))
    for k in total:
      total[k] += float(sums[k])
  n = max(total['count'], 1.0)
  metrics = {'eval_loss': total['loss_sum'] / n,
             'eval_accuracy': total['correct'] / n}
  if s.kind == 'generation':
    metrics['eval_perplexity'] = float(np.exp(min(metrics['eval_loss'], 50)))
    metrics['eval_token_accuracy'] = metrics.pop('eval_accuracy')
  return metrics


def _check_finite(out: dict, step: int, manager, workdir: str) -> float:
  """The step's loss; stops before a non-finite state is saved anywhere."""
  host = distributed.fetch(out)
  loss, norm = float(host['train_loss']), float(host['grad_norm'])
  finite = bool(host.get('state_finite', True))
  if np.isfinite(loss) and np.isfinite(norm) and finite:
    return loss
  manager.wait_until_finished()
  what = '' if finite else ' and the updated state is not finite'
  raise FloatingPointError(
      f'train_loss={loss}, grad_norm={norm}{what} at step {step}; stopping '
      f'before this state is saved. The last good checkpoint (step '
      f'{manager.latest_step()}) is kept in {workdir}/checkpoints. Lower '
      'optimizer.lr or raise optimizer.warmup_steps.')
