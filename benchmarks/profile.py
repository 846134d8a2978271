r"""Where a method's step spends its time beyond the frozen model's: per-kernel
times from jax.profiler, grouped by the model code that made each kernel.

  python -m benchmarks.profile [--model=smollm2] [--method=ntk_attention] \
      [--base=frozen] [--forward] [--batch=8] [--seq_len=128] [--steps=3] \
      [--top=20]

XLA:CPU records every kernel (thunk) it runs; each is an instruction of the
compiled HLO, whose metadata names the jax op and the model code that traced
it (layer numbers folded, so 30 layers make one row). A row is that op name
and kernel kind; its time is summed over threads, per step. The table lists
the rows by how much more time the method spends in them than --base. This
is how NTK-Attention's extra time on SmolLM2 was found (RoPE recomputed in
the feature map's fusion; the state gradient's per-row products). Kernel
times add up to thread time, not wall time: two cores run them in parallel.
"""
import argparse
import collections
import glob
import re
import tempfile

import jax

from benchmarks import harness

_SKIP = re.compile(r'Thunk|Await|^\$')  # executor bookkeeping, not kernels


def op_names(hlo_text: str) -> dict:
  """HLO instruction name -> the jax op that made it, layers as layer_N."""
  names = {}
  for m in re.finditer(r'%([\w.\-]+) = .*?op_name="([^"]+)"', hlo_text):
    op = re.sub(r'layer_\d+', 'layer_N', m.group(2))
    names[m.group(1)] = re.sub(r'^jit\(\w+\)/', '', op)
  return names


def kernel_seconds(step, forward: bool, steps: int) -> collections.Counter:
  """Seconds per step of each (kernel kind, op name) over `steps` steps."""
  run = step.run_forward if forward else step.run_train
  compiled = step.forward if forward else step.train
  names = op_names(compiled.as_text())
  run()  # warm-up outside the trace
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      for _ in range(steps):
        run()
    trace = glob.glob(f'{folder}/**/*.xplane.pb', recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(trace)
    rows = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if line.name == 'python':
          continue
        for event in line.events:
          if _SKIP.search(event.name):
            continue
          name = event.name.removeprefix('end: ')  # a kernel's tail
          op = names.get(name, '(no metadata)')
          kind = re.sub(r'(\.\d+)+$', '', name)
          rows[(kind, op)] += event.duration_ns * 1e-9 / steps
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='smollm2')
  p.add_argument('--method', default='ntk_attention')
  p.add_argument('--base', default='frozen')
  p.add_argument('--forward', action='store_true',
                 help='the forward pass (loss) instead of the train step')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=128)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--top', type=int, default=20)
  args = p.parse_args(argv)
  cfg, frozen = harness.load_model(args.model)
  batch = harness.make_batch(cfg, args.batch, args.seq_len)
  times = {}
  for name in (args.base, args.method):
    step = harness.Step(cfg, frozen, name, {}, batch, lm=cfg.is_decoder)
    times[name] = kernel_seconds(step, args.forward, args.steps)
  base, method = times[args.base], times[args.method]
  what = 'forward' if args.forward else 'train step'
  print(f'{args.model}, batch {args.batch} x {args.seq_len}, {what}: kernel '
        f'time per step (all threads) {args.base} '
        f'{sum(base.values()):.3f} s, {args.method} '
        f'{sum(method.values()):.3f} s', flush=True)
  rows = sorted(set(base) | set(method),
                key=lambda k: base[k] - method[k])[:args.top]
  print(f'| {args.base} (ms) | {args.method} (ms) | extra (ms) | kernel | '
        'op |\n|---:|---:|---:|---|---|')
  for kind, op in rows:
    b, m = 1e3 * base[(kind, op)], 1e3 * method[(kind, op)]
    print(f'| {b:.2f} | {m:.2f} | {m - b:+.2f} | {kind} | {op[-110:]} |')
  return times


if __name__ == '__main__':
  main()
