r"""The NLU table: every method on SST-2, RTE and CB with all-MiniLM-L6-v2.

  python -m experiments.nlu            # sizes this 2-core machine affords
  python -m experiments.nlu --full     # the papers' sizes, for real hardware

`get_config('rte')` is one run of the table (`'rte,full'` at full size), so
any point can be rerun alone with `python -m ntk_prefix.train`. Learning
rates are chosen on rows held out of the training set (`eval_split`); the
official dev set (`test_split`) is scored once per run and never used for a
choice. `get_search_space()` is the grid per method: every method gets the
same number of points and the same steps.
"""
from ntk_prefix import methods, sweep
from ntk_prefix.config import base_config

# task: (max_length, rows held out of train for choosing the learning rate)
TASKS = {'sst2': (64, 500), 'rte': (128, 250), 'cb': (128, 50),
         'boolq': (256, 500)}  # BoolQ: when a user has its files
# Papers' sizes: epochs over the full training set, batch 32 (P-Tuning v2,
# LoPA train 10-100 epochs; these are their orders, not a tuned schedule).
FULL_EPOCHS = {'sst2': 10, 'rte': 50, 'cb': 100, 'boolq': 10}
TRAIN_ROWS = {'sst2': 67349, 'rte': 2490, 'cb': 250, 'boolq': 9427}
# This machine (2 cores, ~2,500 tokens/s through MiniLM with gradients):
# steps at batch 16, so the table regenerates in about two hours.
QUICK_STEPS = {'sst2': 200, 'rte': 100, 'cb': 100, 'boolq': 100}

# Every registered method ('none': the head alone), each beside its presets
# that change an option (the official runs' configurations).
METHODS = methods.table_rows(methods.NAMES)
# Learning-rate grid per method, four points each (the method's own
# `lr_grid`); this machine searches the middle two first. Centred on each
# family's usual rates (full fine-tuning needs ~100x smaller steps than a
# prefix), so no method is tuned in a better region.
LR_GRID = methods.lr_grids()


def get_config(arg: str = 'sst2'):
  task, *flags = arg.split(',')
  if task not in TASKS:
    raise ValueError(f'configs/nlu.py:{arg}: task {task!r} is not one of '
                     f'{sorted(TASKS)}.')
  max_length, holdout = TASKS[task]
  c = base_config()
  c.model.path = 'minilm'
  c.task.name = task
  c.task.max_length = max_length
  c.task.truncate = True  # a few RTE/CB/BoolQ pairs are longer: cut, counted
  c.task.train_split = f'train[:-{holdout}]'
  c.task.eval_split = f'train[-{holdout}:]'
  c.task.test_split = 'validation'
  c.method.name = 'ntk_attention'
  c.optimizer.warmup_steps = 10
  if 'full' in flags:
    c.batch_size = 32
    c.total_steps = FULL_EPOCHS[task] * (TRAIN_ROWS[task] - holdout) // 32
    c.optimizer.warmup_steps = c.total_steps // 10
    c.eval_every = max(c.total_steps // 10, 1)
    c.checkpoint_every = c.eval_every
  else:
    c.batch_size = 16
    c.total_steps = QUICK_STEPS[task]
    c.eval_every = c.checkpoint_every = c.total_steps
  c.log_every = 25
  c.progress = False
  return c


def get_search_space(arg: str = 'sst2') -> dict:
  """method -> override dicts, each run with seed 0; the best goes on."""
  return sweep.search_space(LR_GRID, full='full' in arg.split(',')[1:])
