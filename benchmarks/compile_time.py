r"""Compile time of the training step against depth: unrolled layers against
`model.scan_layers` (one scanned block over stacked parameters).

  python -m benchmarks.compile_time [--depths=4,8,16,32,48] [--method=...]

The model has SmolLM2-135M's layer shape (hidden 576, 9 heads over 3 KV
heads, MLP 1536, vocabulary 49,152) at each depth; nothing is allocated:
the step is lowered and compiled from shapes alone. Prints one row per
depth and writes compile_time.json / .md to --out.
"""
import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp

from benchmarks import harness
from ntk_prefix import atomic, methods, models, provenance

SMOLLM2_LAYER = models.ModelConfig(
    family='llama', hidden_size=576, num_layers=1, num_heads=9,
    num_kv_heads=3, head_dim=64, intermediate_size=1536, max_positions=8192,
    vocab_size=49152, norm='rms', norm_eps=1e-5, pre_norm=True,
    activation='silu', gated_mlp=True, causal=True, rope_theta=100000.0,
    attn_bias=False, mlp_bias=False, name='SmolLM2 layer shape')


def compile_seconds(cfg, method_name: str, scan: bool, batch: int,
                    length: int) -> tuple:
  """(lower s, compile s) of the train step's gradient, from shapes."""
  method = methods.get(method_name, cfg)
  frozen = models.param_shapes(cfg)
  if scan:
    frozen = jax.eval_shape(lambda p: models.stack_layers(p, cfg.num_layers),
                            frozen)
  params = jax.eval_shape(lambda: method.init(jax.random.PRNGKey(0)))
  data = harness.make_batch(cfg, batch, length)
  inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in
            data.items() if k != 'labels'}

  def loss(method_params, frozen_params, inputs):
    out = models.apply(cfg, frozen_params, method_params, inputs,
                       adapter=method, scan_layers=scan)
    return jnp.mean(out['logits'].astype(jnp.float32) ** 2)

  t0 = time.perf_counter()
  lowered = jax.jit(jax.grad(loss)).lower(params, frozen, inputs)
  t1 = time.perf_counter()
  lowered.compile()
  return t1 - t0, time.perf_counter() - t1


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--depths', default='4,8,16,32,48')
  p.add_argument('--method', default='ntk_attention')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=128)
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  rows = []
  print(f'{provenance.device()}: {args.method} train-step gradient, batch '
        f'{args.batch} x {args.seq_len}', flush=True)
  for depth in [int(d) for d in args.depths.split(',')]:
    cfg = dataclasses.replace(SMOLLM2_LAYER, num_layers=depth)
    row = {'layers': depth}
    for scan in (False, True):
      lower, comp = compile_seconds(cfg, args.method, scan, args.batch,
                                    args.seq_len)
      key = 'scan' if scan else 'unrolled'
      row[f'{key}_lower_s'], row[f'{key}_compile_s'] = lower, comp
    rows.append(row)
    print(f'{depth:3d} layers: unrolled {row["unrolled_lower_s"]:6.2f} + '
          f'{row["unrolled_compile_s"]:6.2f} s, scanned '
          f'{row["scan_lower_s"]:6.2f} + {row["scan_compile_s"]:6.2f} s '
          '(lower + compile)', flush=True)
  meta = harness.stamp('benchmarks.compile_time', argv, args.out,
                       method=args.method, batch=args.batch,
                       seq_len=args.seq_len)
  os.makedirs(args.out, exist_ok=True)
  atomic.write_json(os.path.join(args.out, 'compile_time.json'),
                    {'meta': meta, 'rows': rows})
  lines = [f'Compile time of the {args.method} train step (gradient) against '
           f'depth, SmolLM2-135M layer shape, batch {args.batch} x '
           f'{args.seq_len}, {meta["device"]}, jax {jax.__version__}.',
           f'Command: `{meta["command"]}`; commit {meta["commit"]}; '
           f'{meta["date"]}.',
           '', '| layers | unrolled: lower + compile (s) | scanned: lower + '
           'compile (s) |', '|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["layers"]} | {r["unrolled_lower_s"]:.2f} + '
                 f'{r["unrolled_compile_s"]:.2f} | {r["scan_lower_s"]:.2f} + '
                 f'{r["scan_compile_s"]:.2f} |')
  atomic.write_text(os.path.join(args.out, 'compile_time.md'),
                    '\n'.join(lines) + '\n')
  return rows


if __name__ == '__main__':
  main()
