"""The methods, by the name `config.method.name` uses.

A new method is one file here (an Options dataclass and a `base.Method`
subclass) plus its line in REGISTRY.
"""
from typing import Any, Mapping

from ntk_prefix.methods import (full, iapt, lopa, lora, none, ntk_attention,
                                p_tuning_v2, prefix_tuning, prompt_tuning)
from ntk_prefix.methods.base import Method, MethodError, count_params, near
from ntk_prefix.models.config import ModelConfig

REGISTRY = {cls.name: cls for cls in (
    ntk_attention.NtkAttention, prefix_tuning.PrefixTuning,
    p_tuning_v2.PTuningV2, prompt_tuning.PromptTuning, lopa.Lopa, iapt.Iapt,
    lora.Lora, full.Full, none.NoMethod)}

NAMES = tuple(REGISTRY)
# Methods that attend to an explicit key/value prefix of a set length.
PREFIX_METHODS = tuple(n for n, cls in REGISTRY.items()
                       if cls.prefix_length_option)


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
  it to something other than the method's default.
  """
  name = method_config['name']
  options = method_config.get(name, {}) if hasattr(method_config, 'get') else {}
  if hasattr(options, 'to_dict'):
    options = options.to_dict()
  preset = method_config.get('preset', '') if hasattr(method_config,
                                                      'get') else ''
  if preset and name in REGISTRY:
    defaults = default_options()[name]
    options = {k: v for k, v in options.items()
               if k not in defaults or _differs(v, defaults[k])}
  return get(name, model_cfg, options, preset=preset, task=task,
             tokenizer=tokenizer)


def _differs(a, b) -> bool:
  as_tuple = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
  return as_tuple(a) != as_tuple(b)


def default_options() -> dict:
  """{name: {option: default}} for every method (configs are built from it)."""
  import dataclasses
  return {name: {f.name: f.default for f in dataclasses.fields(cls.Options)}
          for name, cls in REGISTRY.items()}


__all__ = ['REGISTRY', 'NAMES', 'PREFIX_METHODS', 'Method', 'MethodError', 'get', 'from_config',
           'default_options', 'count_params']
