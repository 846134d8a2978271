"""python -m ntk_prefix.train --config=configs/default.py --workdir=DIR

config -> mesh -> frozen model -> method state -> jitted sharded step over
the method state alone -> metrics.jsonl, TensorBoard, orbax checkpoints.
Running the same command on the same DIR resumes from the last checkpoint;
the batch of step s depends only on (seed, s), so a resumed run equals an
uninterrupted one. A DIR that holds a run of another config, or a live run,
is refused before any compute (see workdir.py).
"""
import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ntk_prefix import atomic, checkpoints, config as config_lib, distributed
from ntk_prefix import export, lm_loss, methods, models, sharding
from ntk_prefix import workdir as workdir_lib
from ntk_prefix.optimizer import decay_mask, make_optimizer  # noqa: F401
from ntk_prefix.checkpoints.paths import resolve
from ntk_prefix.data import builders, pipeline


@dataclasses.dataclass
class Setup:
  """Everything a run builds before its first step."""
  config: Any
  model_cfg: models.ModelConfig
  frozen_params: Any
  tokenizer: Any
  method: methods.Method
  train_ds: pipeline.Dataset
  eval_ds: pipeline.Dataset
  kind: str  # task kind: 'text_classification', 'generation', ...
  mesh: Any
  test_ds: Any = None  # task.test_split, scored once at the end


def build(config) -> Setup:
  """Loads and checks everything; all config errors surface here."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.batch_size, mesh)
  sharding.check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  kind = builders.task_kind(config.task.name)
  path = resolve(config.model.path)
  model_cfg, frozen, _ = checkpoints.load(path)
  if (kind == 'image') != model_cfg.is_vision:
    raise ValueError(f'task.name={config.task.name!r} ({kind}) does not fit '
                     f'model.path={config.model.path!r} ({model_cfg.family}).')
  if kind == 'generation' and not model_cfg.is_decoder:
    raise ValueError(f'task {config.task.name!r} generates text; '
                     f'model.path={config.model.path!r} is an encoder.')
  best_metric_direction(config.best_metric, kind)
  tokenizer = None if model_cfg.is_vision else checkpoints.load_tokenizer(path)
  if tokenizer is not None and tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  method = methods.from_config(config.method, model_cfg, config.task.name,
                               tokenizer)
  t = config.task
  if not model_cfg.is_vision and model_cfg.rope_theta is None:
    room = model_cfg.max_input_tokens - method.position_offset()
    if t.max_length > room:
      raise ValueError(
          f'task.max_length={t.max_length} plus the method\'s position offset '
          f'({method.position_offset()}) exceeds the model\'s '
          f'{model_cfg.max_input_tokens} positions; use at most {room}.')
  manual = t.data_dir or config_lib.default_manual_dir()
  prepared = t.prepared_dir or os.path.expanduser(
      '~/tensorflow_datasets' if t.name.startswith(builders.TFDS_PREFIX)
      else '~/.cache/ntk_prefix/tfds')
  load = lambda split, limit: pipeline.load(
      t.name, split, tokenizer, manual_dir=manual, data_dir=prepared,
      max_length=t.max_length, truncate=t.truncate, limit=limit,
      image_size=model_cfg.image_size, download=t.download)
  train_ds = load(t.train_split, t.train_limit)
  eval_ds = load(t.eval_split, t.eval_limit)
  test_ds = load(t.test_split, t.test_limit) if t.test_split else None
  return Setup(config, model_cfg, frozen, tokenizer, method, train_ds, eval_ds,
               kind, mesh, test_ds)


def init_method_params(s: Setup) -> dict:
  rng = jax.random.PRNGKey(s.config.seed)
  if s.config.init_from:
    params = _state_from(s)
  else:
    params = s.method.init(jax.random.fold_in(rng, 1), s.frozen_params,
                           s.tokenizer)
  if s.kind != 'generation' and 'head' not in params:
    params['head'] = models.init_classifier_head(
        jax.random.fold_in(rng, 2), s.model_cfg, s.train_ds.num_labels)
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def best_metric_direction(name: str, kind: str) -> bool:
  """True if a higher `name` is better; an unknown name is an error."""
  known = (('eval_loss', 'eval_perplexity', 'eval_token_accuracy')
           if kind == 'generation' else ('eval_loss', 'eval_accuracy'))
  if name not in known:
    raise ValueError(
        f'best_metric={name!r} is not a metric of a {kind} task; use one of '
        f'{list(known)} (the best state by it is exported to best/).')
  return not name.endswith(('loss', 'perplexity'))


def _state_from(s: Setup) -> dict:
  """The method state of config.init_from, which must be of this method."""
  path = s.config.init_from
  if not os.path.exists(os.path.join(path, 'method.json')):
    raise ValueError(f'init_from={path!r}: no method.json there; point it at '
                     'a best/ or final/ export (e.g. from '
                     '`python -m ntk_prefix.compress`).')
  method, params = export.load(path, s.model_cfg, s.frozen_params)
  if method.name != s.method.name:
    raise ValueError(f'init_from={path!r} holds a {method.name} state, but '
                     f'method.name={s.method.name!r}; set '
                     f'--config.method.name={method.name}.')
  return dict(params)


def loss_and_metrics(method_params, frozen_params, batch, rng, *, s: Setup,
                     train: bool):
  """Mean loss over real examples/tokens, plus sums for exact eval metrics."""
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
  logits = out['class_logits']
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
  def eval_step(method_params, frozen_params, batch):
    _, sums = loss_and_metrics(method_params, frozen_params, batch, None, s=s,
                               train=False)
    return sums

  return jax.jit(eval_step,
                 in_shardings=(NamedSharding(s.mesh, P()), frozen_sharding,
                               NamedSharding(s.mesh, P('data'))),
                 out_shardings=NamedSharding(s.mesh, P()))


def make_steps(s: Setup, opt, frozen_sharding):
  """The jitted train and eval steps with explicit shardings."""
  replicated = NamedSharding(s.mesh, P())
  batch_sharding = NamedSharding(s.mesh, P('data'))

  def train_step(method_params, opt_state, frozen_params, batch, rng):
    (loss, _), grads = jax.value_and_grad(
        loss_and_metrics, has_aux=True)(method_params, frozen_params, batch,
                                        rng, s=s, train=True)
    updates, opt_state = opt.update(grads, opt_state, method_params)
    method_params = optax.apply_updates(method_params, updates)
    # Loss and gradients come from the state before the update; the state
    # about to be saved is checked too (a finite step can overflow it).
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves(method_params)]))
    return method_params, opt_state, {'train_loss': loss,
                                      'grad_norm': optax.tree.norm(grads),
                                      'state_finite': finite}

  train = jax.jit(
      train_step,
      in_shardings=(replicated, replicated, frozen_sharding, batch_sharding,
                    replicated),
      out_shardings=(replicated, replicated, replicated),
      donate_argnums=(0, 1))
  return train, make_eval_step(s, frozen_sharding)


def batch_sharding(s: Setup):
  return NamedSharding(s.mesh, P('data'))


def run_eval(s: Setup, evaluate, method_params, frozen_params,
             ds=None) -> dict:
  """Exact sums over the whole split (padding rows weigh 0), whatever the
  number of processes: each feeds its rows of every batch."""
  total = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  ds = s.eval_ds if ds is None else ds
  n = s.config.eval_batch_size
  rows = distributed.local_rows(batch_sharding(s), n)
  for local in pipeline.eval_batches(ds, n, rows):
    batch = distributed.global_batch(local, batch_sharding(s), n)
    sums = distributed.fetch(evaluate(method_params, frozen_params, batch))
    for k in total:
      total[k] += float(sums[k])
  n = max(total['count'], 1.0)
  metrics = {'eval_loss': total['loss_sum'] / n,
             'eval_accuracy': total['correct'] / n}
  if s.kind == 'generation':
    metrics['eval_perplexity'] = float(np.exp(min(metrics['eval_loss'], 50)))
    metrics['eval_token_accuracy'] = metrics.pop('eval_accuracy')
  return metrics


def train_and_evaluate(config, workdir: str,
                       allow_config_change: bool = False) -> dict:
  """Trains (resuming if DIR has checkpoints); returns the final metrics.

  Refused before any compute when DIR holds a run of another config (unless
  `allow_config_change`) or a live run.
  """
  # Process 0 holds the lock for the run; a refused process 0 stops them all.
  with workdir_lib.lock(workdir, hold=distributed.is_writer()):
    workdir_lib.check_config(workdir, config, allow_config_change)
    return _train(config, workdir)


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


def _train(config, workdir: str) -> dict:
  import orbax.checkpoint as ocp
  s = build(config)
  frozen, frozen_sharding = place_frozen(s)
  opt, schedule = make_optimizer(config, s.method.no_decay)
  replicated = NamedSharding(s.mesh, P())
  method_params = jax.device_put(init_method_params(s), replicated)
  opt_state = jax.device_put(opt.init(method_params), replicated)
  rng = jax.random.PRNGKey(config.seed)
  train_step, evaluate = make_steps(s, opt, frozen_sharding)

  manager = workdir_lib.checkpoint_manager(workdir, config)
  state = {'method_params': method_params, 'opt_state': opt_state,
           'step': 0, 'rng': np.asarray(jax.random.key_data(rng))}
  start, restored = workdir_lib.restore_latest(manager, jax.tree.map(
      ocp.utils.to_shape_dtype_struct, state), workdir)
  if restored is not None:
    method_params = jax.device_put(restored['method_params'], replicated)
    opt_state = jax.device_put(restored['opt_state'], replicated)
    rng = jax.random.wrap_key_data(jnp.asarray(restored['rng']))
    start = int(restored['step'])
    print(f'resumed from step {start} in {workdir}', file=sys.stderr)
  else:
    start = 0
  writer = distributed.is_writer()
  if writer:
    workdir_lib.record_config(workdir, config)  # once the checkpoint fits
  log = workdir_lib.MetricsLog(workdir, start, writer)

  n_trainable = methods.count_params(method_params)
  print(f'{s.method.name} on {s.model_cfg.family} ({config.model.path}): '
        f'{n_trainable:,} trainable / {methods.count_params(s.frozen_params):,}'
        f' frozen parameters; task {config.task.name}: {len(s.train_ds)} train,'
        f' {len(s.eval_ds)} eval examples; mesh {dict(s.mesh.shape)}',
        file=sys.stderr)

  def save(step, params, opt_state):
    manager.save(step, args=ocp.args.StandardSave(
        {'method_params': params, 'opt_state': opt_state, 'step': step,
         'rng': np.asarray(jax.random.key_data(rng))}))

  # The best score so far, from the log kept up to the resumed step (the
  # replayed steps recompute the same evaluations, so best/ stays right).
  higher = best_metric_direction(config.best_metric, s.kind)
  sign = 1.0 if higher else -1.0
  best = max((sign * r[config.best_metric] for r in log.rows
              if config.best_metric in r), default=-np.inf)
  metrics = {}
  from tqdm import tqdm
  bar = tqdm(total=config.total_steps, initial=start, disable=not (
      config.progress and writer), dynamic_ncols=True, desc=s.method.name)
  t_last, interval_losses = time.time(), []
  rows = distributed.local_rows(batch_sharding(s), config.batch_size)
  for step in range(start, config.total_steps):
    batch = distributed.global_batch(
        pipeline.train_batch(s.train_ds, step, config.batch_size,
                             config.seed, rows),
        batch_sharding(s), config.batch_size)
    method_params, opt_state, out = train_step(
        method_params, opt_state, frozen, batch, jax.random.fold_in(rng, step))
    done = step + 1
    interval_losses.append(_check_finite(out, done, manager, workdir))
    bar.update(1)
    if done % config.log_every == 0 or done == config.total_steps:
      examples = len(interval_losses) * config.batch_size
      rate = examples / max(time.time() - t_last, 1e-9)
      t_last = time.time()
      # Mean over the steps since the last log line (a single batch is noisy).
      row = {'train_loss': float(np.mean(interval_losses)),
             'learning_rate': float(schedule(step)),
             'grad_norm': float(out['grad_norm']),
             'examples_per_second': rate}
      log.write(done, row)
      interval_losses = []
      bar.set_postfix(loss=f"{row['train_loss']:.4f}", ex_s=f'{rate:.1f}')
    if done % config.eval_every == 0 or done == config.total_steps:
      metrics = run_eval(s, evaluate, method_params, frozen)
      log.write(done, metrics)
      bar.write(f'step {done}: ' + ', '.join(f'{k}={v:.4f}'
                                             for k, v in metrics.items()))
      if sign * metrics[config.best_metric] > best:
        best = sign * metrics[config.best_metric]
        if writer:
          export.save(os.path.join(workdir, 'best'), s.method,
                      method_params, config.model.path)
    if done % config.checkpoint_every == 0 or done == config.total_steps:
      save(done, method_params, opt_state)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  if not metrics and start >= config.total_steps:  # already finished
    metrics = run_eval(s, evaluate, method_params, frozen)
  if s.test_ds is not None:
    test = run_eval(s, evaluate, method_params, frozen, s.test_ds)
    metrics.update({'test_' + k[len('eval_'):]: v for k, v in test.items()})
    log.write(config.total_steps, {k: v for k, v in metrics.items()
                                   if k.startswith('test_')})
  if writer:
    export.save(os.path.join(workdir, 'final'), s.method, method_params,
                config.model.path)
    atomic.write_json(os.path.join(workdir, 'final_metrics.json'),
                      {'step': config.total_steps, **metrics,
                       'trainable_params': n_trainable})
  return metrics


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  config, rest = config_lib.from_argv(argv)
  workdir = next((a.split('=', 1)[1] for a in rest
                  if a.startswith('--workdir=')), None)
  if workdir is None:
    raise SystemExit('--workdir=DIR is required (it is where the run lives and '
                     'resumes from).')
  allow = '--allow_config_change' in rest
  unknown = [a for a in rest if not a.startswith('--workdir=')
             and a != '--allow_config_change']
  if unknown:
    raise SystemExit(f'unknown arguments: {unknown}')
  distributed.initialize()  # before any JAX computation
  try:
    metrics = train_and_evaluate(config, workdir, allow)
  except workdir_lib.WorkdirError as e:
    raise SystemExit(f'error: {e}') from None
  print(json.dumps(metrics))


if __name__ == '__main__':
  main()
