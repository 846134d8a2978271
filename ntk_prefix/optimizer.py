"""The optimizer: AdamW with warm-up and decay, clipping, weight decay by
name, gradient accumulation; it sees the method's pytree only."""
import re

import jax
import optax

# Leaves that are never decayed, whatever their rank: biases (b1, b2,
# up_bias, ...) and norm scales. Stacked per-layer biases are 2-d, so rank
# cannot tell them from matrices; names can.
_NO_DECAY = re.compile(r'(.*_)?bias|b\d+|scale')


def decay_mask(params, no_decay=()):
  """True for the leaves weight decay applies to: kernels, embeddings and
  the methods' matrices; never biases, norm scales, or the vector state a
  method names in `no_decay` (e.g. NTK-Attention's k)."""
  def decayed(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return not (_NO_DECAY.fullmatch(name) or name in no_decay)
  return jax.tree_util.tree_map_with_path(decayed, params)


SCHEDULES = ('cosine', 'linear', 'constant')


def check_schedule(name: str) -> None:
  """The one check of `optimizer.schedule` (config.validate runs it before
  anything loads; make_optimizer again for direct callers)."""
  if name not in SCHEDULES:
    raise ValueError(f'optimizer.schedule={name!r} is not one of '
                     f'{SCHEDULES}.')


def _unit_rate(count):
  del count
  return 1.0


def make_optimizer(config, no_decay) -> tuple:
  """(optax transformation, learning-rate schedule) of `config.optimizer`.

  The transformation's updates are for a learning rate of 1: the train step
  scales them by `schedule(step)`, an argument, so one compiled step serves
  every learning rate and schedule of a sweep (the rate baked in made each
  point of a search compile its own). Under gradient accumulation the
  schedule runs over training steps, as the progress bar counts them, and an
  update takes the rate of its last micro-step. Its state is that of
  `optax.adamw` with a schedule, so checkpoints from before still restore.
  no_decay: the method's names kept out of weight decay (`method.no_decay`);
  required, so no caller decays a method's vector state by leaving it out."""
  o = config.optimizer
  check_schedule(o.schedule)
  warmup = min(o.warmup_steps, max(config.total_steps - 1, 0))
  if o.schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(config.total_steps, warmup + 1),
        o.lr * o.end_lr_ratio)
  elif o.schedule == 'linear':
    schedule = optax.join_schedules([
        optax.linear_schedule(0.0, o.lr, max(warmup, 1)),
        optax.linear_schedule(o.lr, o.lr * o.end_lr_ratio,
                              max(config.total_steps - warmup, 1))], [warmup])
  else:  # 'constant'
    schedule = optax.constant_schedule(o.lr)
  opt = optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(_unit_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                  mask=lambda p: decay_mask(p, no_decay)))
  if o.accumulate_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=o.accumulate_steps)
  return opt, schedule
