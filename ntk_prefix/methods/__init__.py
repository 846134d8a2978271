"""The methods, by the name `config.method.name` uses.

A method is one file: a module here (or a plugin module named in
$NTK_PREFIX_METHODS, comma-separated, e.g. `mylab.my_method`) defining an
Options dataclass and a `base.Method` subclass with a `name`. The registry
is found, not listed, as big_vision finds its models by module name; every
list of methods (configs, experiments, benchmarks, mixed batches, PEFT
export, tests) is derived from it.
"""
import dataclasses
import importlib
import inspect
import os
import pkgutil
from typing import Any, Mapping

from ntk_prefix.methods.base import Method, MethodError, count_params, near
from ntk_prefix.models.hooks import ModelConfig

PLUGINS_ENV = 'NTK_PREFIX_METHODS'
_NOT_METHODS = ('base', 'mixed')  # helpers of this package, no method


def _modules() -> list:
  names = [f'{__name__}.{m.name}' for m in pkgutil.iter_modules(__path__)
           if m.name not in _NOT_METHODS and not m.name.startswith('_')]
  plugins = [n.strip() for n in os.environ.get(PLUGINS_ENV, '').split(',')
             if n.strip()]
  modules = []
  for name in names + plugins:
    try:
      modules.append(importlib.import_module(name))
    except ImportError as e:
      if name in plugins and e.name == name:
        raise ImportError(f'{PLUGINS_ENV} names {name!r}, which cannot be '
                          f'imported ({e}); put its folder on PYTHONPATH.'
                          ) from e
      raise
  return modules


def _discover() -> dict:
  found = {}
  for module in _modules():
    for _, cls in inspect.getmembers(module, inspect.isclass):
      if (issubclass(cls, Method) and cls.name and
          cls.__module__ == module.__name__):
        if cls.name in found and found[cls.name] is not cls:
          raise MethodError(f'Two methods are named {cls.name!r}: '
                            f'{found[cls.name].__module__} and '
                            f'{cls.__module__}.')
        found[cls.name] = cls
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


REGISTRY = _discover()
NAMES = tuple(REGISTRY)
# Methods that attend to an explicit key/value prefix of a set length.
PREFIX_METHODS = tuple(n for n, cls in REGISTRY.items()
                       if cls.prefix_length_option)
# Methods whose state summarises a prefix of any length (m = infinity), and
# those that adapt weights rather than tokens or attention.
PREFIX_SUMMARIES = tuple(n for n, cls in REGISTRY.items()
                         if cls.summarises_prefix)
WEIGHT_SPACE = tuple(n for n, cls in REGISTRY.items() if cls.weight_space)
# Methods that adapt the model, and the baseline that adapts nothing (the
# frozen model with a task head: 'none').
ADAPTING = tuple(n for n, cls in REGISTRY.items() if cls.adapts)
UNADAPTED = tuple(n for n, cls in REGISTRY.items() if not cls.adapts)
# Methods whose state rows of one batch may each hold (methods/mixed.py).
MIXABLE = tuple(n for n, cls in REGISTRY.items() if cls.mixable)


def table_rows(names, tokenizer: bool = True) -> tuple:
  """`names`, each followed by its presets that change one of its options
  ('NAME:PRESET'): a table sets every method beside its official runs.
  tokenizer=False (a vision table) leaves out the presets that start from
  words."""
  rows = []
  for name in names:
    rows.append(name)
    cls = REGISTRY[name]
    defaults = cls.Options()
    rows += [f'{name}:{preset}' for preset, p in cls.presets.items()
             if any(getattr(defaults, k) != v for k, v in p.options.items())
             and (tokenizer or not p.needs_tokenizer)]
  return tuple(rows)


def prefix_length_options(name: str, m: int) -> dict:
  """Options giving the explicit-prefix method `name` a prefix of m rows,
  with the input's positions left where they are (shift_positions off where
  the method has it): m is then the only thing that changes, and a prefix
  may be longer than the model's position table."""
  cls = REGISTRY[name]
  options = {cls.prefix_length_option: m}
  if 'shift_positions' in {f.name for f in dataclasses.fields(cls.Options)}:
    options['shift_positions'] = False
  return options


def lr_grids() -> dict:
  """{name: its default 4-point learning-rate grid}."""
  return {n: tuple(cls.lr_grid) for n, cls in REGISTRY.items()}


def get(name: str, model_cfg: ModelConfig,
        options: Mapping[str, Any] = None, *, preset: str = '',
        task: str = '', tokenizer: Any = None) -> Method:
  """The method `name` for this model: its defaults, then the preset's
  values (for `task` where the preset has task-specific ones), then
  `options`."""
  if name not in REGISTRY:
    raise MethodError(f'method.name={name!r} is not a method.'
                      f'{near(name, REGISTRY)} Known: {sorted(REGISTRY)}.')
  cls = REGISTRY[name]
  values = {}
  if preset:
    if preset not in cls.presets:
      raise MethodError(
          f'method.preset={preset!r} is not a preset of {name}.'
          f'{near(preset, cls.presets)} Its presets: {sorted(cls.presets)} '
          "(or '' for the defaults).")
    values = cls.presets[preset].resolve(task)
  values.update(options or {})
  from ntk_prefix.methods.base import parse_options
  opts = parse_options(cls.Options, values, f'method.{name}')
  return cls(model_cfg, cls.resolve_options(opts, tokenizer))


def from_config(method_config, model_cfg: ModelConfig, task: str = '',
                tokenizer: Any = None) -> Method:
  """From `config.method`: {'name', 'preset', <name>: {options}, ...}.

  With a preset, an option keeps the preset's value unless the config sets
  it to something that is not, and never was, the method's default
  (`Method.former_defaults`).
  """
  name, options, preset = _parts(method_config)
  return get(name, model_cfg, _overrides(name, options, preset),
             preset=preset, task=task, tokenizer=tokenizer)


def effective_options(method_config, task: str = '') -> dict:
  """{option: value} a run of `config.method` uses (defaults, the preset's
  values, the config's overrides), without building the method: two
  configs naming the same values are the same run."""
  name, options, preset = _parts(method_config)
  if name not in REGISTRY or (preset and preset not in REGISTRY[name].presets):
    return options  # from_config names the error
  values = dict(default_options()[name])
  if preset:
    values.update(REGISTRY[name].presets[preset].resolve(task))
  values.update(_overrides(name, options, preset))
  return values


def _parts(method_config) -> tuple:
  """(name, {option: value}, preset) of `config.method` or its JSON dict."""
  name = method_config['name']
  options = method_config.get(name) or {}
  if hasattr(options, 'to_dict'):
    options = options.to_dict()
  return name, dict(options), method_config.get('preset') or ''


def _overrides(name: str, options: dict, preset: str) -> dict:
  if not preset or name not in REGISTRY:
    return options
  defaults = default_options()[name]
  former = REGISTRY[name].former_defaults
  was_default = lambda k, v: k in defaults and any(
      not _differs(v, d) for d in (defaults[k],) + tuple(former.get(k, ())))
  return {k: v for k, v in options.items() if not was_default(k, v)}


def _differs(a, b) -> bool:
  as_tuple = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
  return as_tuple(a) != as_tuple(b)


def default_options() -> dict:
  """{name: {option: default}} for every method (configs are built from it)."""
  import dataclasses
  return {name: {f.name: f.default for f in dataclasses.fields(cls.Options)}
          for name, cls in REGISTRY.items()}


__all__ = ['REGISTRY', 'NAMES', 'PREFIX_METHODS', 'ADAPTING', 'UNADAPTED',
           'MIXABLE',
           'Method', 'MethodError', 'get', 'from_config', 'default_options',
           'count_params', 'lr_grids']
