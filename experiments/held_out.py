"""The held-out loss of methods' states as `init` makes them, before any
training step: experiments.init_loss's table, ntk_init's first column and
the generation tables' frozen-model row."""
import dataclasses
import sys

from ntk_prefix import config as config_lib, methods
from ntk_prefix.build import build, init_trainable
from ntk_prefix.steps import make_eval_step, place_frozen, run_eval


def initial_losses(config, names: list, seeds: int) -> dict:
  """{method: [held-out token loss at init, one per seed]}; the model and
  data load once, each method's state is made and scored as training
  would score it before its first step."""
  setup = build(config)
  frozen, frozen_sharding = place_frozen(setup)
  out = {}
  for label in names:
    name, _, preset = label.partition(':')
    c = config.copy_and_resolve_references()  # the caller's stays as it was
    config_lib.override(c, 'method.name', name)
    config_lib.override(c, 'method.preset', preset)
    s = dataclasses.replace(setup, config=c, method=methods.from_config(
        c.method, setup.model_cfg, c.task.name, setup.tokenizer))
    evaluate = make_eval_step(s, frozen_sharding)
    out[label] = []
    for seed in range(seeds if name in methods.ADAPTING else 1):
      c.seed = seed
      params = init_trainable(s)
      out[label].append(
          run_eval(s, evaluate, params, frozen)['eval_loss'])
      print(f'{label} seed {seed}: {out[label][-1]:.3f}', file=sys.stderr,
            flush=True)
  return out
