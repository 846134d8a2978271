"""The mixed-adapter sweep: one forward pass over a batch whose rows each
hold another adapter, against one pass per adapter."""
import os
import time

import jax
import jax.numpy as jnp

from benchmarks import harness
from ntk_prefix import methods, models
from ntk_prefix.methods.mixed import Mixed


def sweep_mixed(model: str, adapters: int, rows_each: int, length: int,
                repeats: int) -> list:
  """Serving several adapters of one method: one mixed forward pass against
  one pass per adapter (forward only, batch = adapters x rows_each)."""
  cfg, frozen = harness.load_model(model)
  data = harness.make_batch(cfg, adapters * rows_each, length)
  inputs = {k: jnp.asarray(data[k]) for k in ('input_ids', 'attention_mask')}
  rows = []
  for name in methods.MIXABLE:
    method = methods.get(name, cfg, {})
    states = [method.init(jax.random.PRNGKey(i), frozen)
              for i in range(adapters)]
    mixed = Mixed(method)
    params = {'adapters': mixed.stack(states), 'row_adapter': jnp.repeat(
        jnp.arange(adapters), rows_each)}
    together = jax.jit(lambda p, x: models.apply(
        cfg, frozen, p, x, adapter=mixed, lm_logits=False)['pooled'])
    apart = jax.jit(lambda p, x: models.apply(
        cfg, frozen, p, x, adapter=method, lm_logits=False)['pooled'])
    parts = [jax.tree.map(lambda a: a[i * rows_each:(i + 1) * rows_each],
                          inputs) for i in range(adapters)]

    def run_together():
      t0 = time.perf_counter()
      together(params, inputs).block_until_ready()
      return time.perf_counter() - t0

    def run_apart():
      t0 = time.perf_counter()
      for state, part in zip(states, parts):
        apart(state, part).block_until_ready()
      return time.perf_counter() - t0

    t_mixed = harness.median_time(run_together, repeats)
    t_apart = harness.median_time(run_apart, repeats)
    rows.append(dict(sweep='mixed', model=os.path.basename(model), method=name,
                     prefix_length=getattr(method.opts, 'length', 0),
                     adapters=adapters, batch=adapters * rows_each,
                     seq_len=length, step_seconds=t_mixed,
                     sequential_seconds=t_apart,
                     ratio_to_sequential=t_mixed / t_apart))
    print(f'  {name:14s} mixed {t_mixed:6.3f} s  one after another '
          f'{t_apart:6.3f} s', flush=True)
  return rows
