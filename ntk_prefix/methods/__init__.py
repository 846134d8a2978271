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


def get(name: str, model_cfg: ModelConfig,
        options: Mapping[str, Any] = None) -> Method:
  """The method `name` for this model, with options overriding defaults."""
  if name not in REGISTRY:
    raise MethodError(f'method.name={name!r} is not a method.'
                      f'{near(name, REGISTRY)} Known: {sorted(REGISTRY)}.')
  cls = REGISTRY[name]
  from ntk_prefix.methods.base import parse_options
  opts = parse_options(cls.Options, dict(options or {}), f'method.{name}')
  return cls(model_cfg, opts)


def from_config(method_config, model_cfg: ModelConfig) -> Method:
  """From `config.method`: {'name': ..., <name>: {options}, ...}."""
  name = method_config['name']
  options = method_config.get(name, {}) if hasattr(method_config, 'get') else {}
  if hasattr(options, 'to_dict'):
    options = options.to_dict()
  return get(name, model_cfg, options)


def default_options() -> dict:
  """{name: {option: default}} for every method (configs are built from it)."""
  import dataclasses
  return {name: {f.name: f.default for f in dataclasses.fields(cls.Options)}
          for name, cls in REGISTRY.items()}


__all__ = ['REGISTRY', 'NAMES', 'Method', 'MethodError', 'get', 'from_config',
           'default_options', 'count_params']
