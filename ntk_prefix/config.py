"""Configs are data: the base ConfigDict, loading config files, overrides.

`--config=configs/x.py[:arg]` loads `get_config(arg)`; `--config.a.b=value`
overrides one field, parsed as the type the field already has. A key that
does not exist is an error naming its nearest valid neighbours.
"""
import ast
import difflib
import importlib.util
import math
import os
from typing import Optional

import ml_collections

from ntk_prefix import methods, optimizer
from ntk_prefix.models import fused


def default_manual_dir() -> str:
  """Where the original data files are: $NTK_PREFIX_DATA, else the
  workplace's ../shared/data beside the repo, else ~/ntk_prefix_data."""
  env = os.environ.get('NTK_PREFIX_DATA')
  if env:
    return env
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  shared = os.path.join(os.path.dirname(repo), 'shared', 'data')
  if os.path.isdir(shared):
    return shared
  return os.path.expanduser('~/ntk_prefix_data')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A method state to start from (a best/ or final/ export of the same
  # method, e.g. written by `python -m ntk_prefix.compress`); '' = init.
  c.init_from = ''
  # 'minilm' / 'smollm2' name the embedded checkpoints; else a folder or .gguf.
  # attention_impl: 'xla' (reference, CPU), 'cudnn', 'pallas' or 'auto'
  # (models/fused.py); scan_layers: one scanned block over stacked layer
  # params, so compile time stays flat in depth (same numbers as unrolled).
  c.model = ml_collections.ConfigDict(dict(
      path='minilm', dtype='float32', remat='', attention_impl='xla',
      scan_layers=False))
  c.task = ml_collections.ConfigDict(dict(
      name='sst2',
      data_dir='',  # manual dir with the original files ('' = default)
      prepared_dir='',  # where tfds writes array_record ('' = ~/.cache)
      download=False,  # fetch official files when missing (needs network)
      train_split='train', eval_split='validation',
      max_length=64, truncate=True,
      # Generation tasks: lay each training batch's examples end to end in
      # as few rows as hold them (data/packing.py): the same loss and
      # gradients, no step spent on padding. Not for LoPA or IAPT, whose
      # state is computed per example.
      pack=False,
      train_limit=-1, eval_limit=-1,  # fixed seeded subsets; -1 = all
      # Scored once with the final state, never used for choices: e.g. tune
      # on eval_split='train[-200:]' and report test_split='validation'.
      test_split='', test_limit=-1,
  ))
  # preset: a named set of option values with its source, e.g.
  # 'official_vit' (see `python -m ntk_prefix.methods --presets`).
  c.method = ml_collections.ConfigDict({'name': 'ntk_attention', 'preset': '',
                                        **methods.default_options()})
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-3, schedule='cosine', warmup_steps=20, end_lr_ratio=0.0,
      weight_decay=0.01,  # never on biases, norms or 1-d state
      # Micro-steps per update; steps and warm-up count micro-steps.
      clip_norm=1.0, b1=0.9, b2=0.999, accumulate_steps=1))
  c.batch_size = 32
  c.eval_batch_size = 64
  c.total_steps = 200
  c.log_every = 10
  c.eval_every = 100  # and always at the end
  c.checkpoint_every = 50
  c.max_to_keep = 2
  c.async_checkpoints = True
  c.best_metric = 'eval_accuracy'  # the best method state is exported
  # Mesh axes; -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  # (regex over frozen parameter paths, spec) pairs, first match wins; a spec
  # is comma-separated mesh axes per array axis ('' = replicated, e.g.
  # 'data' shards axis 0 over the data axis: ZeRO-3 style).
  c.sharding = ml_collections.ConfigDict(dict(frozen_rules=(('.*', ''),)))
  c.progress = True
  # Locked: a config file or override that names a field not here is an
  # error, never a silent new key (ConfigDict.lock).
  c.lock()
  return c


def load_file(path: str, arg: Optional[str] = None):
  if not os.path.exists(path):
    raise FileNotFoundError(f'--config={path}: no such config file.')
  spec = importlib.util.spec_from_file_location('config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/x.py' or 'configs/x.py:arg'."""
  path, _, arg = spec.partition(':')
  module = load_file(path)
  return module.get_config(arg) if arg else module.get_config()


def flat_keys(config, prefix=''):
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_keys(value, name + '.')
    else:
      yield name


def _parse(value: str, current):
  if isinstance(current, bool):
    if value.lower() in ('true', '1', 'yes'):
      return True
    if value.lower() in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected a bool, got {value!r}')
  if isinstance(current, int):
    return int(value)
  if isinstance(current, float):
    return float(value)
  if isinstance(current, (tuple, list)):
    return tuple(ast.literal_eval(value))
  return value


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
  """KeyError naming the nearest valid keys if dotted `key` is not one."""
  keys = set(flat_keys(config))
  if key not in keys:
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f' Nearest valid keys: {close}.' if close else ''
    raise KeyError(f'--config.{key} is not a config key.{hint}')


def override(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config[key] = value for a dotted key that must already exist."""
  check_key(config, key)
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  current = node[leaf]
  if isinstance(value, str):
    try:
      value = _parse(value, current)
    except ValueError as e:
      raise ValueError(f'--config.{key}={value!r}: {e}') from None
  node[leaf] = value


def from_argv(argv: list) -> tuple:
  """(config, other args) from ['--config=...', '--config.x=..', ...]."""
  spec = None
  overrides, rest = [], []
  for a in argv:
    if a.startswith('--config='):
      spec = a.split('=', 1)[1]
    elif a.startswith('--config.'):
      key, _, value = a[len('--config.'):].partition('=')
      overrides.append((key, value))
    else:
      rest.append(a)
  if spec is None:
    raise SystemExit('--config=configs/FILE.py is required.')
  config = get_config(spec)
  for key, value in overrides:
    override(config, key, value)
  validate(config)
  return config, rest


def validate(config) -> None:
  """Errors that need no compute: method name, options, mesh shape."""
  dtype = config.model.dtype
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"model.dtype={dtype!r} is not supported; use 'float32' "
                     "or 'bfloat16' (the frozen weights' compute type).")
  impl = config.model.get('attention_impl', 'xla')
  if impl not in fused.IMPLS:
    raise ValueError(f'model.attention_impl={impl!r} is not one of '
                     f'{fused.IMPLS}: xla (the reference), cudnn (GPU, '
                     f'bfloat16), pallas (flash kernel) or auto.')
  _validate_steps(config)
  name = config.method.name
  if name not in methods.REGISTRY:
    raise methods.MethodError(
        f'method.name={name!r} is not a method.'
        f'{methods.near(name, methods.REGISTRY)} Known: '
        f'{sorted(methods.REGISTRY)}.')


def _validate_steps(config) -> None:
  """The optimizer and the step counts: a value that would train nothing,
  or skip work without a word, stops before anything loads."""
  o = config.optimizer
  optimizer.check_schedule(o.schedule)
  if not (math.isfinite(o.lr) and o.lr > 0):
    raise ValueError(f'optimizer.lr={o.lr!r}: the peak learning rate must be '
                     'a positive number, e.g. 1e-3.')
  for key in ('total_steps', 'batch_size'):
    if int(config[key]) < 1:
      raise ValueError(f'{key}={config[key]!r}: must be at least 1.')
  k = o.accumulate_steps
  if int(k) < 1:
    raise ValueError(f'optimizer.accumulate_steps={k!r}: must be at least 1 '
                     '(1: no accumulation).')
  left = config.total_steps % k
  if left:
    lower, upper = config.total_steps - left, config.total_steps - left + k
    raise ValueError(
        f'total_steps={config.total_steps} is not a multiple of '
        f'optimizer.accumulate_steps={k}: its last {left} micro-step(s) '
        f'would never make an update. Use total_steps={upper}'
        + (f' or {lower}.' if lower else '.'))
  if o.warmup_steps < 0 or o.end_lr_ratio < 0:
    raise ValueError(
        f'optimizer.warmup_steps={o.warmup_steps!r}, optimizer.end_lr_ratio='
        f'{o.end_lr_ratio!r}: neither may be negative.')
