"""python -m ntk_prefix.train --config=configs/default.py --workdir=DIR

config -> mesh -> frozen model -> method state -> jitted sharded step over
the method state alone -> metrics.jsonl, TensorBoard, orbax checkpoints.
Running the same command on the same DIR resumes from the last checkpoint;
the batch of step s depends only on (seed, s), so a resumed run equals an
uninterrupted one. A DIR that holds a run of another config, or a live run,
is refused before any compute (see workdir.py).

This file is the loop; build.py makes a run's ingredients from its config,
steps.py its jitted steps, optimizer.py the optimizer, workdir.py the
record, lock, log and checkpoints of a workdir.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from ntk_prefix import atomic, checkpointing, cli, distributed, export
from ntk_prefix import methods, provenance
from ntk_prefix import workdir as workdir_lib
from ntk_prefix.data import batches
from ntk_prefix.build import best_metric_direction, build, init_trainable
from ntk_prefix.optimizer import make_optimizer
from ntk_prefix.steps import (_check_finite, batch_sharding, make_steps,
                              place_frozen, run_eval)


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


def step_batch(s, step: int) -> dict:
  """The global batch of training step `step`, from this process's rows."""
  config, sharding = s.config, batch_sharding(s)
  if not config.task.pack:
    rows = distributed.local_rows(sharding, config.batch_size)
    return distributed.global_batch(batches.train_batch(
        s.train_ds, step, config.batch_size, config.seed, rows), sharding,
                                    config.batch_size)
  # Packed rows: their count varies by step; every process packs alike.
  full = batches.train_batch(s.train_ds, step, config.batch_size,
                              config.seed, pack=True,
                              row_multiple=s.mesh.shape['data'])
  n = len(full['input_ids'])
  rows = distributed.local_rows(sharding, n)
  return distributed.global_batch({k: v[rows] for k, v in full.items()},
                                  sharding, n)


def _train(config, workdir: str) -> dict:
  import orbax.checkpoint as ocp
  t0, code = time.time(), provenance.process_commit()  # the code that trains
  s = build(config)
  frozen, frozen_sharding = place_frozen(s)
  opt, schedule = make_optimizer(config, s.method.no_decay)
  replicated = NamedSharding(s.mesh, P())
  trainable = jax.device_put(init_trainable(s), replicated)
  opt_state = jax.device_put(opt.init(trainable), replicated)
  rng = jax.random.PRNGKey(config.seed)
  train_step, evaluate = make_steps(s, opt, frozen_sharding)

  manager = checkpointing.checkpoint_manager(workdir, config)
  state = {'trainable': trainable, 'opt_state': opt_state,
           'step': 0, 'rng': np.asarray(jax.random.key_data(rng))}
  start, restored = checkpointing.restore_latest(manager, jax.tree.map(
      ocp.utils.to_shape_dtype_struct, state), workdir)
  if restored is not None:
    trainable = jax.device_put(restored['trainable'], replicated)
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

  n_trainable = methods.count_params(trainable)
  print(f'{s.method.name} on {s.model_cfg.family} ({config.model.path}): '
        f'{n_trainable:,} trainable / {methods.count_params(s.frozen_params):,}'
        f' frozen parameters; task {config.task.name}: {len(s.train_ds)} train,'
        f' {len(s.eval_ds)} eval examples; mesh {dict(s.mesh.shape)}',
        file=sys.stderr)

  def save(step, trainable, opt_state):
    manager.save(step, args=ocp.args.StandardSave(
        {'trainable': trainable, 'opt_state': opt_state, 'step': step,
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
  for step in range(start, config.total_steps):
    batch = step_batch(s, step)
    learning_rate = np.float32(schedule(step))
    trainable, opt_state, out = train_step(
        trainable, opt_state, frozen, batch, jax.random.fold_in(rng, step),
        learning_rate)
    done = step + 1
    interval_losses.append(_check_finite(out, done, manager, workdir))
    bar.update(1)
    if done % config.log_every == 0 or done == config.total_steps:
      examples = len(interval_losses) * config.batch_size
      rate = examples / max(time.time() - t_last, 1e-9)
      t_last = time.time()
      # Mean over the steps since the last log line (a single batch is noisy).
      row = {'train_loss': float(np.mean(interval_losses)),
             'learning_rate': float(learning_rate),
             'grad_norm': float(out['grad_norm']),
             'examples_per_second': rate}
      log.write(done, row)
      interval_losses = []
      bar.set_postfix(loss=f"{row['train_loss']:.4f}", ex_s=f'{rate:.1f}')
    if done % config.eval_every == 0 or done == config.total_steps:
      metrics = run_eval(s, evaluate, trainable, frozen)
      log.write(done, metrics)
      bar.write(f'step {done}: ' + ', '.join(f'{k}={v:.4f}'
                                             for k, v in metrics.items()))
      if sign * metrics[config.best_metric] > best:
        best = sign * metrics[config.best_metric]
        if writer:
          export.save(os.path.join(workdir, 'best'), s.method,
                      trainable['method'], config.model.path,
                      trainable.get('head'))
    if done % config.checkpoint_every == 0 or done == config.total_steps:
      save(done, trainable, opt_state)
  bar.close()
  manager.wait_until_finished()
  manager.close()
  if not metrics and start >= config.total_steps:  # already finished
    metrics = run_eval(s, evaluate, trainable, frozen)
  if s.test_ds is not None:
    test = run_eval(s, evaluate, trainable, frozen, s.test_ds)
    metrics.update({'test_' + k[len('eval_'):]: v for k, v in test.items()})
    log.write(config.total_steps, {k: v for k, v in metrics.items()
                                   if k.startswith('test_')})
  if writer:
    export.save(os.path.join(workdir, 'final'), s.method, trainable['method'],
                config.model.path, trainable.get('head'))
    # One write: a run stopped before it has no final metrics at all.
    atomic.write_json(os.path.join(workdir, 'final_metrics.json'),
                      {'step': config.total_steps, **metrics,
                       'trainable_params': n_trainable,
                       'wall_seconds': round(time.time() - t0, 1),
                       'device': provenance.device(), 'commit': code})
  return metrics


ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue a run under a changed config on '
    'purpose (else a workdir holding another config is refused).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unknown arguments: {argv[1:]}')
  config = cli.config()
  distributed.initialize()  # before any JAX computation
  try:
    metrics = train_and_evaluate(config, cli.WORKDIR.value,
                                 ALLOW_CONFIG_CHANGE.value)
  except workdir_lib.WorkdirError as e:
    raise SystemExit(f'error: {e}') from None
  print(json.dumps(metrics))


if __name__ == '__main__':
  cli.run(main)
