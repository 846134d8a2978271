r"""What `model.dtype=bfloat16` buys on this machine: matmul rates by operand
and result type at SmolLM2's shapes, and the train step of each method with
float32 against bfloat16 frozen weights (instruction batch: real E2E rows,
loss on the answer, as the tables train).

  python -m benchmarks.precision [--methods=ntk_attention,lora] \
      [--batch=8] [--seq_len=96] [--repeats=5] [--out=benchmarks/results]
  (also: python -m benchmarks.run --sweeps=precision)

Steps are timed alternately (float32, bfloat16, float32, ...), medians.
Prints the tables and writes precision.json / .md to --out.
"""
import argparse
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks import harness, peer
from ntk_prefix import atomic

F32, BF16 = jnp.float32, jnp.bfloat16
# (rows, contracted, columns): tokens of batch 8 x 96 against SmolLM2's
# projections (576 -> 576, 576 -> 1536, 1536 -> 576) and a square matmul.
SHAPES = ((768, 576, 576), (768, 576, 1536), (768, 1536, 576),
          (2048, 2048, 2048))
KINDS = (('float32', F32, None), ('bf16 -> float32', BF16, F32),
         ('bf16 -> bf16', BF16, None))


def cpu_bf16_flags() -> str:
  """The CPU's bf16 instructions (AMX, AVX-512) as /proc/cpuinfo lists
  them: what the bf16 rates depend on."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next(line for line in f if line.startswith('flags')).split()
  except (OSError, StopIteration):
    return 'unknown'
  return ', '.join(f for f in flags if 'bf16' in f) or 'none'


def step_times(method: str, batch: int, length: int, repeats: int) -> dict:
  cfg, frozen = harness.load_model('smollm2')
  pair = peer.instruction_batch(harness.resolve('smollm2'), batch, length,
                              pack=False)  # as the tables train
  if pair is None:
    raise SystemExit('benchmarks.precision needs the E2E files (see Data in '
                     'README.md) for its instruction batch.')
  frozen16 = harness.as_dtype(frozen, 'bfloat16')
  steps = {name: harness.Step(cfg, params, method, {}, pair[0], lm=True)
           for name, params in (('float32', frozen), ('bfloat16', frozen16))}
  for s in steps.values():  # warm-up
    s.run_train()
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, s in steps.items():
      times[name].append(s.run_train())
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--methods', default='ntk_attention,p_tuning_v2,lora',
                 help="comma-separated; '' times matmuls only")
  p.add_argument('--shapes', default=';'.join(
      ','.join(map(str, s)) for s in SHAPES), help='m,k,n;m,k,n;...')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=96)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  rates = []
  for shape in [tuple(int(x) for x in s.split(','))
                for s in args.shapes.split(';')]:
    row = {'shape': list(shape)}
    for name, dtype, result in KINDS:
      row[name] = harness.matmul_rate(shape, 2 * args.repeats, dtype, result)
    rates.append(row)
    print(' x '.join(map(str, shape)) + ': ' + ', '.join(
        f'{name} {row[name] / 1e9:.0f}' for name, _, _ in KINDS) +
        ' GFLOP/s', flush=True)
  steps = []
  for method in filter(None, args.methods.split(',')):
    t = step_times(method, args.batch, args.seq_len, args.repeats)
    steps.append({'method': method, **t})
    print(f'{method}: train step float32 {t["float32"]:.3f} s, bfloat16 '
          f'{t["bfloat16"]:.3f} s ({t["float32"] / t["bfloat16"]:.2f}x)',
          flush=True)
  meta = harness.stamp('benchmarks.precision', argv, args.out,
                       batch=args.batch, seq_len=args.seq_len,
                       repeats=args.repeats)
  os.makedirs(args.out, exist_ok=True)
  atomic.write_json(os.path.join(args.out, 'precision.json'),
                    {'meta': meta, 'matmuls': rates, 'steps': steps})
  lines = [f'Matmul rates and train steps by precision, {meta["device"]} '
           f'(bf16 instructions: {cpu_bf16_flags()}), jax {jax.__version__}.',
           f'Command: `{meta["command"]}`; commit {meta["commit"]}; '
           f'{meta["date"]}.', '',
           '| m x k x n | ' + ' | '.join(f'{n} (GFLOP/s)' for n, _, _ in
                                        KINDS) + ' |',
           '|---|' + '---:|' * len(KINDS)]
  for r in rates:
    lines.append(f'| {" x ".join(map(str, r["shape"]))} | ' + ' | '.join(
        f'{r[n] / 1e9:.0f}' for n, _, _ in KINDS) + ' |')
  lines += ['', f'SmolLM2-135M train step, batch {args.batch} x '
            f'{args.seq_len}, real E2E rows (loss on the answer); median of '
            f'{args.repeats}, alternating:', '',
            '| method | float32 (s) | bfloat16 (s) | speed-up |',
            '|---|---:|---:|---:|']
  for s in steps:
    lines.append(f'| {s["method"]} | {s["float32"]:.3f} | '
                 f'{s["bfloat16"]:.3f} | {s["float32"] / s["bfloat16"]:.2f}'
                 ' |')
  atomic.write_text(os.path.join(args.out, 'precision.md'),
                    '\n'.join(lines) + '\n')
  return rates, steps


if __name__ == '__main__':
  main()
