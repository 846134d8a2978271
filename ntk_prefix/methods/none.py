"""The frozen model itself (no trainable state but an optional task head)."""
import dataclasses

from ntk_prefix.methods import base


@dataclasses.dataclass(frozen=True)
class Options:
  pass


@dataclasses.dataclass(frozen=True)
class NoMethod(base.Method):
  name = 'none'
  Options = Options

  def init(self, rng, frozen_params=None, tokenizer=None):
    return {}
