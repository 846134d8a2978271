"""A run's ingredients from its config: mesh, frozen model, tokenizer,
method, datasets (`build`), and the method's initial state."""
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix import checkpoints, config as config_lib, export, methods
from ntk_prefix import models, sharding
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
  if t.pack and (not model_cfg.is_decoder or method.per_example):
    raise ValueError(
        f'task.pack=True packs several examples into a row of a decoder LM; '
        + (f'{path} is a {model_cfg.family} model' if not model_cfg.is_decoder
           else f'method.name={method.name!r} computes its state from each '
           'example') + '. Set task.pack=False.')
  manual, prepared = data_dirs(t)
  load = lambda split, limit: pipeline.load(
      t.name, split, tokenizer, manual_dir=manual, data_dir=prepared,
      max_length=t.max_length, truncate=t.truncate, limit=limit,
      image_size=model_cfg.image_size, download=t.download)
  train_ds = load(t.train_split, t.train_limit)
  eval_ds = load(t.eval_split, t.eval_limit)
  test_ds = load(t.test_split, t.test_limit) if t.test_split else None
  return Setup(config, model_cfg, frozen, tokenizer, method, train_ds, eval_ds,
               kind, mesh, test_ds)


def data_dirs(task) -> tuple:
  """(manual, prepared) for config.task: where its original files are and
  where tfds writes its prepared copy."""
  manual = task.data_dir or config_lib.default_manual_dir()
  prepared = task.prepared_dir or os.path.expanduser(
      '~/tensorflow_datasets' if task.name.startswith(builders.TFDS_PREFIX)
      else '~/.cache/ntk_prefix/tfds')
  return manual, prepared


def split_rows(task, split: str) -> list:
  """Every example of a split of config.task, unencoded (dicts with
  'text', 'target', 'label', ...)."""
  manual, prepared = data_dirs(task)
  return builders.load_split(task.name, split, manual, prepared,
                             task.download)


def split_labels(task, split: str, limit: int = -1) -> np.ndarray:
  """The class labels of a split of config.task (of the rows `limit`
  keeps, as the run's own loader keeps them)."""
  manual, prepared = data_dirs(task)
  return builders.split_labels(task.name, split, manual, prepared, limit,
                               task.download)


def init_trainable(s: Setup) -> dict:
  """What the run trains: {'method': the method state, 'head': the task
  head} ('head' only for classification). Models and methods see the
  method state alone; the training code applies the head."""
  rng = jax.random.PRNGKey(s.config.seed)
  head = None
  if s.config.init_from:
    params, head = _state_from(s)
  else:
    params = s.method.init(jax.random.fold_in(rng, 1), s.frozen_params,
                           s.tokenizer)
  trainable = {'method': params}
  if s.kind != 'generation':
    trainable['head'] = head if head is not None else (
        models.init_classifier_head(jax.random.fold_in(rng, 2), s.model_cfg,
                                    s.train_ds.num_labels))
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trainable)


def best_metric_direction(name: str, kind: str) -> bool:
  """True if a higher `name` is better; an unknown name is an error."""
  known = (('eval_loss', 'eval_perplexity', 'eval_token_accuracy')
           if kind == 'generation' else ('eval_loss', 'eval_accuracy'))
  if name not in known:
    raise ValueError(
        f'best_metric={name!r} is not a metric of a {kind} task; use one of '
        f'{list(known)} (the best state by it is exported to best/).')
  return not name.endswith(('loss', 'perplexity'))


def _state_from(s: Setup) -> tuple:
  """(method state, task head or None) of config.init_from, which must be
  of this method."""
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
  return dict(params), export.load_head(path)
