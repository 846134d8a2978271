"""What one train step costs: median seconds and XLA's peak bytes of the
compiled step (compress's before/after report, the prefix-length tables'
cost column)."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from ntk_prefix.build import Setup
from ntk_prefix.optimizer import make_optimizer
from ntk_prefix.steps import make_steps, place_frozen


def step_cost(s: Setup, params, batch: dict, repeats: int = 3):
  """(median seconds, XLA's peak bytes) of the jitted train step of
  `s.method` on `batch` (after compiling); params: the trainable
  {'method', 'head'} (build.init_trainable)."""
  frozen, frozen_sharding = place_frozen(s)
  opt, schedule = make_optimizer(s.config, s.method.no_decay)
  step, _ = make_steps(s, opt, frozen_sharding)
  params = jax.tree.map(jnp.array, params)
  state = opt.init(params)
  rate = np.float32(schedule(0))
  # One compile, timed and measured: calling `step` after lowering it
  # compiled the same program a second time.
  compiled = step.lower(params, state, frozen, batch,
                        jax.random.PRNGKey(0), rate).compile()
  try:
    m = compiled.memory_analysis()
    peak = int(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # not every backend reports it
    peak = None
  times = []
  for r in range(repeats + 1):
    t0 = time.perf_counter()
    params, state, out = compiled(params, state, frozen, batch,
                                  jax.random.PRNGKey(0), rate)
    jax.block_until_ready(out)
    if r:
      times.append(time.perf_counter() - t0)
  return float(np.median(times)), peak
