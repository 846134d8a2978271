r"""The vision table (NTK-Attention paper: ViT-B/16 in21k on CIFAR-100 and
Food-101) for any ViT checkpoint and tfds image set:

  python -m experiments.vision --dataset=tfds:cifar100 \
      --config=configs/vision.py \
      --config.model.path=/path/to/vit-base-patch16-224-in21k [--full]

With no checkpoint and no image set offline, `python -m experiments.vision`
runs the same table as a PIPELINE CHECK: a tiny randomly initialised ViT on
scikit-learn's bundled 8x8 digits. Its numbers are not a result.
"""
import os

from ntk_prefix import methods, sweep
from ntk_prefix.config import base_config, load_file

# A ViT has no vocabulary: presets that start from words do not apply.
METHODS = methods.table_rows(methods.NAMES, tokenizer=False)
# The NLU table's grid: the method, not the data, sets the scale of a step.
LR_GRID = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 'nlu.py')).LR_GRID
# Rows held out of train for choosing the learning rate.
HOLDOUT = {'digits': 200}
FULL_TRAIN_ROWS = {'tfds:cifar100': 50000, 'tfds:food101': 75750}


def get_config(arg: str = 'digits'):
  task, *flags = arg.split(',')
  holdout = HOLDOUT.get(task, 5000)
  c = base_config()
  c.model.path = ''  # a ViT folder; the pipeline check writes a tiny one
  c.task.name = task
  c.task.train_split = f'train[:-{holdout}]'
  c.task.eval_split = f'train[-{holdout}:]'
  c.task.test_split = 'test' if task != 'tfds:food101' else 'validation'
  c.method.name = 'ntk_attention'
  c.method.prompt_tuning.init = 'normal'  # no vocabulary to start from
  if 'full' in flags:  # the paper's order of size: epochs over all of train
    c.batch_size = 64
    c.total_steps = 5 * (FULL_TRAIN_ROWS.get(task, 50000) - holdout) // 64
    c.optimizer.warmup_steps = c.total_steps // 20
    c.eval_every = c.checkpoint_every = max(c.total_steps // 10, 1)
  else:
    c.batch_size = 32
    c.total_steps = 150
    c.optimizer.warmup_steps = 10
    c.eval_every = c.checkpoint_every = c.total_steps
  c.log_every = 25
  c.progress = False
  return c


def get_search_space(arg: str = 'digits') -> dict:
  """method -> override dicts, each run with seed 0; the best goes on."""
  return sweep.search_space(LR_GRID, full='full' in arg.split(',')[1:])
