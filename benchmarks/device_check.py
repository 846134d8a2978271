r"""The accelerator check: one run on a GPU measures what CPUs cannot.

  bash benchmarks/device_check.sh [--out=DIR]   # on the device, one call
  bash benchmarks/device_check.sh --dry-run     # here: tiny shapes, CPU

1. Attention backends (models/fused.py): xla, cudnn (GPU only) and pallas
   on a decoder layer's shapes with an explicit prefix and NTK state, in
   bfloat16: forward and gradient error against float32 xla, and the time
   of forward + backward.
2. The training step of a SmolLM2-135M-shaped model (random weights: the
   real ones do not travel): float32 against bfloat16, per attention
   backend, unrolled against scanned layers: compile seconds, step ms.

Prints each figure as it comes and writes device_check.json / .md to --out.
Every case runs in its own try: one failing backend is reported, not fatal.
"""
import argparse
import dataclasses
import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.compile_time import SMOLLM2_LAYER
from ntk_prefix import methods, models
from ntk_prefix.models import attention
from ntk_prefix.models.hooks import NtkState


def _time(fn, *args, repeats: int) -> float:
  """Median seconds of fn(*args) after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def attention_rows(b, t, m, heads, kv, d, impls, repeats) -> list:
  rng = np.random.RandomState(0)
  f = lambda *s: jnp.asarray(rng.randn(*s), jnp.float32)
  q, k, v = f(b, t, heads, d), f(b, t, kv, d), f(b, t, kv, d)
  pk, pv = f(1, m, kv, d), f(1, m, kv, d)
  ntk = NtkState(z=0.1 * f(heads, d, d), k=jnp.abs(f(heads, d)))
  mask = jnp.ones((b, t), bool).at[-1, t - t // 4:].set(False)

  def loss(impl, dtype):
    def f(q, k, v, pk, pv, ntk):
      cast = lambda x: x.astype(dtype)
      out = attention.attend(cast(q), cast(k), cast(v), key_mask=mask,
                             causal=True, prefix_k=cast(pk),
                             prefix_v=cast(pv), ntk=ntk, impl=impl)
      w = mask[:, :, None, None].astype(jnp.float32)
      return jnp.sum(out.astype(jnp.float32) ** 2 * w), out
    return jax.jit(jax.value_and_grad(f, argnums=range(6), has_aux=True))

  args = (q, k, v, pk, pv, ntk)
  (_, ref), ref_grads = loss('xla', jnp.float32)(*args)
  rows = []
  for impl in impls:
    row = {'case': 'attention', 'impl': impl, 'dtype': 'bfloat16',
           'shape': f'b{b} t{t} m{m} h{heads}/{kv} d{d}'}
    try:
      fn = loss(impl, jnp.bfloat16)
      (_, out), grads = fn(*args)
      w = mask[:, :, None, None]
      row['forward_max_err'] = float(jnp.max(jnp.abs(
          (out.astype(jnp.float32) - ref) * w)))
      row['grad_max_rel_err'] = max(
          float(jnp.max(jnp.abs(a - g)) / (jnp.max(jnp.abs(a)) + 1e-30))
          for a, g in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)))
      row['fwd_bwd_ms'] = 1e3 * _time(fn, *args, repeats=repeats)
    except Exception as e:  # report, go on
      row['error'] = f'{type(e).__name__}: {e}'[:400]
      traceback.print_exc()
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def step_rows(cfg, batch, length, impls, repeats) -> list:
  method = methods.get('ntk_attention', cfg)
  params = method.init(jax.random.PRNGKey(0))
  frozen32 = models.init_params(cfg, jax.random.PRNGKey(1),
                                models.dummy_inputs(cfg))
  data = harness.make_batch(cfg, batch, length)
  inputs = {k: jnp.asarray(v) for k, v in data.items() if k != 'labels'}
  rows = []
  for dtype in ('float32', 'bfloat16'):
    for impl in impls:
      for scan in (False, True):
        row = {'case': 'train_step', 'model': cfg.name,
               'layers': cfg.num_layers, 'batch': f'{batch}x{length}',
               'dtype': dtype, 'impl': impl, 'scan_layers': scan}
        try:
          frozen = jax.tree.map(lambda a: a.astype(jnp.dtype(dtype)),
                                frozen32)
          if scan:
            frozen = models.stack_layers(frozen, cfg.num_layers)

          def loss(p, frozen, inputs):
            out = models.apply(cfg, frozen, p, inputs, adapter=method,
                               attention_impl=impl, scan_layers=scan)
            logits = out['logits'][:, :-1].astype(jnp.float32)
            return -jnp.mean(jnp.take_along_axis(
                jax.nn.log_softmax(logits), inputs['input_ids'][:, 1:, None],
                -1))

          t0 = time.perf_counter()
          step = jax.jit(jax.value_and_grad(loss)).lower(
              params, frozen, inputs).compile()
          row['compile_s'] = time.perf_counter() - t0
          row['loss'] = float(step(params, frozen, inputs)[0])
          row['step_ms'] = 1e3 * _time(step, params, frozen, inputs,
                                       repeats=repeats)
          row['tokens_per_s'] = batch * length / (row['step_ms'] / 1e3)
        except Exception as e:
          row['error'] = f'{type(e).__name__}: {e}'[:400]
          traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dry-run', action='store_true',
                 help='tiny shapes on this machine: checks the script runs')
  p.add_argument('--out', default=os.environ.get('OUT', 'benchmarks/results'))
  args = p.parse_args(argv)
  gpu = jax.default_backend() == 'gpu'
  impls = ['xla', 'pallas'] + (['cudnn'] if gpu else [])
  if args.dry_run:
    attn = dict(b=2, t=32, m=4, heads=4, kv=2, d=16, repeats=1)
    cfg = dataclasses.replace(SMOLLM2_LAYER, hidden_size=64, num_heads=4,
                              num_kv_heads=2, head_dim=16,
                              intermediate_size=96, vocab_size=128,
                              num_layers=2, name='tiny')
    batch, length, repeats = 2, 32, 1
  else:
    attn = dict(b=8, t=1024, m=16, heads=9, kv=3, d=64, repeats=10)
    cfg = dataclasses.replace(SMOLLM2_LAYER, num_layers=30,
                              name='SmolLM2-135M shape')
    batch, length, repeats = 8, 512, 10
  print(f'jax {jax.__version__}, {jax.devices()}', flush=True)
  rows = attention_rows(impls=impls, **attn)
  rows += step_rows(cfg, batch, length, impls, repeats)
  meta = {'jax': jax.__version__, 'devices': [str(d) for d in jax.devices()],
          'dry_run': args.dry_run, 'date': time.strftime('%Y-%m-%d')}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'device_check.json'), 'w') as f:
    json.dump({'meta': meta, 'rows': rows}, f, indent=1)
  failed = [r for r in rows if 'error' in r]
  print(f'{len(rows)} checks, {len(failed)} failed; wrote '
        f'{os.path.join(args.out, "device_check.json")}', flush=True)
  if failed:
    raise SystemExit(1)
  return rows


if __name__ == '__main__':
  main()
