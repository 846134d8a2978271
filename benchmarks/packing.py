r"""What `task.pack=True` buys: the SmolLM2 train step on real E2E batches,
several examples per row against one per row (right-padded to the
pipeline's bucket, as the tables train).

  python -m benchmarks.packing [--methods=ntk_attention,lora] [--batch=8] \
      [--seq_len=128] [--steps=16] [--dtype=bfloat16] [--out=benchmarks/results]
  (also: python -m benchmarks.run --sweeps=packing)

The first `--steps` batches of the E2E training order (seed 0), each laid
out both ways; every distinct shape is compiled before the clock starts
(a training run compiles each once; the table lists them), then each batch
is timed once each way, alternating. The loss is the same either way
(tests/test_packing.py). Prints the table and writes packing.json / .md.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness, peer
from ntk_prefix import atomic
from ntk_prefix.data import batches


def e2e_batches(batch: int, length: int, steps: int) -> dict:
  """{'one per row': [...], 'packed': [...]}: the same training batches."""
  try:
    ds = peer.e2e_split(harness.resolve('smollm2'), 'train', length)
  except FileNotFoundError as e:
    raise SystemExit(f'benchmarks.packing needs the E2E files (see Data in '
                     f'README.md): {e}') from None
  out = {}
  for name, pack in (('one per row', False), ('packed', True)):
    out[name] = []
    for step in range(steps):
      b = batches.train_batch(ds, step, batch, seed=0, pack=pack)
      out[name].append({k: v for k, v in b.items()
                        if k not in ('loss_mask', 'prompt_mask')})
  return out


def time_layouts(method: str, layouts: dict, frozen, cfg) -> dict:
  """{layout: {seconds per batch, tokens, shapes, compile seconds}}; one
  compiled step per distinct set of array shapes (rows x width and the
  loss slots), as a training run compiles them."""
  steps = {}  # (layout, shapes) -> compiled step
  shapes = lambda b: tuple(sorted((k, v.shape) for k, v in b.items()))
  for name, layout in layouts.items():
    for b in layout:
      key = (name, shapes(b))
      if key not in steps:
        steps[key] = harness.Step(cfg, frozen, method, {}, b, lm=True)
        steps[key].run_train()  # warm-up
  times = {name: [] for name in layouts}
  for i in range(len(next(iter(layouts.values())))):
    for name, layout in layouts.items():  # alternating, batch by batch
      step = steps[(name, shapes(layout[i]))]
      step.batch = jax.tree.map(jnp.asarray, layout[i])
      times[name].append(step.run_train())
  return {name: dict(
      seconds=times[name],
      tokens=int(sum(b['input_ids'].size for b in layouts[name])),
      shapes=sorted({b['input_ids'].shape for b in layouts[name]}),
      compile_seconds=sum(s.compile_seconds for (n, _), s in steps.items()
                          if n == name)) for name in layouts}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--methods', default='ntk_attention,lora')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=128)
  p.add_argument('--steps', type=int, default=16)
  p.add_argument('--dtype', default='bfloat16', choices=('float32',
                                                         'bfloat16'))
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  cfg, frozen = harness.load_model('smollm2')
  frozen = harness.as_dtype(frozen, args.dtype)
  layouts = e2e_batches(args.batch, args.seq_len, args.steps)
  real = int(sum(b['attention_mask'].sum() for b in layouts['packed']))
  examples = args.steps * args.batch
  rows = []
  for method in filter(None, args.methods.split(',')):
    t = time_layouts(method, layouts, frozen, cfg)
    for name, r in t.items():
      rows.append(dict(method=method, layout=name,
                       seconds=float(np.sum(r['seconds'])),
                       seconds_per_100_examples=float(
                           100 * np.sum(r['seconds']) / examples),
                       tokens=r['tokens'], real_tokens=real,
                       shapes=[list(s) for s in r['shapes']],
                       compile_seconds=r['compile_seconds']))
    base, packed = (t[n]['seconds'] for n in ('one per row', 'packed'))
    print(f'{method}: {examples} examples, one per row '
          f'{np.sum(base):.1f} s ({t["one per row"]["tokens"]:,} tokens), '
          f'packed {np.sum(packed):.1f} s ({t["packed"]["tokens"]:,} '
          f'tokens): {np.sum(base) / np.sum(packed):.2f}x', flush=True)
  meta = harness.stamp('benchmarks.packing', argv, args.out,
                       batch=args.batch, seq_len=args.seq_len,
                       steps=args.steps, dtype=args.dtype)
  os.makedirs(args.out, exist_ok=True)
  atomic.write_json(os.path.join(args.out, 'packing.json'),
                    {'meta': meta, 'rows': rows})
  lines = [f'Packed rows (`task.pack=True`) against one example per row: '
           f'SmolLM2-135M train steps ({args.dtype} weights) on the first '
           f'{args.steps} E2E training batches of {args.batch} '
           f'({real:,} real tokens), {meta["device"]}, jax {jax.__version__}.',
           f'Command: `{meta["command"]}`; commit {meta["commit"]}; '
           f'{meta["date"]}. Each batch timed once each way, alternating; '
           'compilation excluded (one per shape, listed).', '',
           '| method | layout | seconds | s per 100 examples | tokens computed '
           '| shapes (rows x width) | speed-up |', '|---|---|---:|---:|---:|---|---:|']
  for r in rows:
    base = next(x for x in rows if x['method'] == r['method']
                and x['layout'] == 'one per row')
    lines.append(
        f"| {r['method']} | {r['layout']} | {r['seconds']:.1f} | "
        f"{r['seconds_per_100_examples']:.2f} | {r['tokens']:,} | "
        + ', '.join(f'{a}x{b}' for a, b in r['shapes']) +
        f" | {base['seconds'] / r['seconds']:.2f}x |")
  atomic.write_text(os.path.join(args.out, 'packing.md'),
                    '\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
