"""The frozen model itself (no trainable state but an optional task head)."""
import dataclasses

from ntk_prefix.methods import base


@dataclasses.dataclass(frozen=True)
class Options:
  pass


@dataclasses.dataclass(frozen=True)
class NoMethod(base.Method):
  name = 'none'
  order = 80  # place in tables and listings
  # The task head alone.
  lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)
  adapts = False
  Options = Options

  def init(self, rng, frozen_params=None, tokenizer=None):
    return {}
