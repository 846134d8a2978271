r"""make bench: cost per method, cost against prefix length, and the PEFT peer.

  python -m benchmarks.run                       # all sweeps, default sizes
  python -m benchmarks.run --sweeps=prefix_length --repeats=5
  python -m benchmarks.run --full                # the issue's largest sizes

Writes benchmarks/results/latest.json (one row per measurement),
latest.md (the tables, with the command, commit, date and device) and
step_time_vs_m.png. Configurations of one sweep are timed round-robin with
the frozen step between each two, so drift of a shared machine hits them
alike; each figure is a median, each `x frozen` the median ratio to the
frozen steps timed on either side.
"""
import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import attention_cost, compile_time, decode_speed, harness
from benchmarks import packing, precision
from benchmarks import report
from benchmarks.mixed import sweep_mixed
from benchmarks.peer import PRECISIONS as PEER_PRECISIONS, sweep_peer
from ntk_prefix import methods, provenance

METHODS = methods.ADAPTING  # every registered method but 'none'
# The explicit-prefix methods at each m, and NTK-Attention summarising m rows.
PREFIX_METHODS = methods.PREFIX_METHODS + ('ntk_attention',)


def prefix_options(method: str, m: int) -> dict:
  """Options giving `method` a prefix of m rows."""
  if method == 'ntk_attention':  # its state summarises m rows; cost is flat
    return dict(init='prefix', init_prefix_length=m)
  return methods.prefix_length_options(method, m)


def timed_round_robin(steps: list, repeats: int, kind: str,
                      floor=None) -> tuple:
  """(median seconds per step, [each round's ratio to steps[floor]] or
  None) for each of `steps`, timed in turns. Each timed call follows an
  untimed call of the same step: the caches and the allocator a 10-second,
  3 GB step leaves behind are not charged to the configuration timed after it
  (NTK-Attention's state is m-independent, yet timed right after P-Tuning
  v2 at m = 16,384 it read 1.33x frozen; timed warm, 0.98x). The floor is
  timed again before every other configuration, and each ratio divides by
  the mean of the two floor times on either side of it: a shared machine's
  drift across a round (the methods sweep's ratios moved by +-5% between
  whole runs when each divided by one floor median) cancels in the pair."""
  def timed(step):
    run = step.run_train if kind == 'train' else step.run_forward
    run()
    return run()
  times = [[] for _ in steps]
  ratios = [[] for _ in steps]
  for r in range(repeats + 1):  # round 0 is the warm-up
    before = None if floor is None else timed(steps[floor])
    if r and floor is not None:
      times[floor].append(before)
    for i, s in enumerate(steps):
      if i == floor:
        continue
      t = timed(s)
      if r:
        times[i].append(t)
      if floor is not None:
        after = timed(steps[floor])
        if r:
          ratios[i].append(t / (0.5 * (before + after)))
        before = after
  medians = [float(np.median(x)) for x in times]
  if floor is None:
    return medians, None
  return medians, [[1.0] * repeats if i == floor else x
                   for i, x in enumerate(ratios)]


def measure(sweep: str, model: str, configs: list, batch: int, length: int,
            repeats: int, rate: float) -> list:
  """configs: [(method, options, prefix_length)] on one model and batch."""
  cfg, frozen = harness.load_model(model)
  data = harness.make_batch(cfg, batch, length)
  steps, rows = [], []
  for method, options, m in configs:
    print(f'  compiling {method} m={m}', flush=True)
    steps.append(harness.Step(cfg, frozen, method, options, data,
                              lm=cfg.is_decoder))
  floor_index = [meth for meth, _, _ in configs].index(harness.FLOOR)
  train, ratios = timed_round_robin(steps, repeats, 'train', floor_index)
  # Forward steps are a third of a train step and steadier: one round
  # fewer, and no floor between them (no forward ratio is reported).
  forward, _ = timed_round_robin(steps, max(repeats - 1, 1), 'forward')
  model_flops = 4 * harness.matmul_params(cfg, frozen) * batch * length
  for (method, options, m), s, t, f, rounds in zip(configs, steps, train,
                                                  forward, ratios):
    rows.append(dict(
        sweep=sweep, model=os.path.basename(model.rstrip('/')),
        method=method, prefix_length=m, options=options, batch=batch,
        seq_len=length, params=s.param_count, step_seconds=t,
        forward_seconds=f, examples_per_s=batch / t,
        tokens_per_s=batch * length / t, compile_seconds=s.compile_seconds,
        # median of the ratios to the adjacent floor steps, and each round's:
        # their spread is the figure's noise on this machine
        ratio_to_frozen=float(np.median(rounds)),
        ratio_to_frozen_rounds=rounds,
        peak_memory_bytes=s.memory_bytes,
        forward_peak_memory_bytes=s.forward_memory_bytes,
        trainable_bytes=s.param_bytes, optimizer_bytes=s.opt_bytes,
        step_flops_xla=s.flops, step_bytes_xla=s.bytes_accessed,
        model_flops=model_flops,
        floor_fraction=model_flops / rate / t))
    print(f'  {method:14s} m={m:<6d} {t:7.3f} s/step  fwd {f:6.3f} s', flush=True)
  return rows


def sweep_methods(model: str, batch: int, length: int, repeats: int,
                  rate: float) -> list:
  configs = [(harness.FLOOR, {}, 0)] + [(m, {}, 0) for m in METHODS]
  return measure('methods', model, configs, batch, length, repeats, rate)


def sweep_prefix_length(model: str, lengths: list, batch: int, length: int,
                        repeats: int, rate: float) -> list:
  configs = [(harness.FLOOR, {}, 0)]
  for m in lengths:
    if m:
      configs += [(meth, prefix_options(meth, m), m) for meth in PREFIX_METHODS]
  return measure('prefix_length', model, configs, batch, length, repeats, rate)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sweeps',
                 default='methods,prefix_length,peer,mixed,attention',
                 help='comma-separated: methods, prefix_length, peer, mixed, '
                 'attention (XLA bytes and FLOPs of one attention layer per '
                 'method: benchmarks/attention_cost.py, attention_cost.md), '
                 'and, not by default, compile (compile time against depth, '
                 'unrolled against scanned layers: benchmarks/compile_time.py'
                 ', compile_time.md), decode (greedy decoding speed per '
                 'method: benchmarks/decode_speed.py, decode_speed.md) and '
                 'precision (float32 against bfloat16 matmuls and train '
                 'steps: benchmarks/precision.py, precision.md) and packing '
                 '(real E2E train steps, packed rows against one example per '
                 'row: benchmarks/packing.py, packing.md)')
  p.add_argument('--encoder', default='minilm')
  p.add_argument('--decoder', default='smollm2')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--lengths', default='0,16,64,256,1024,4096,16384')
  p.add_argument('--prefix_batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=128)
  p.add_argument('--peer_precisions', default='float32,bfloat16',
                 help='the peer sweep\'s precisions (benchmarks/peer.py)')
  p.add_argument('--full', action='store_true',
                 help='more repeats and m up to 65536 (for a big machine)')
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  if args.full:
    args.repeats = max(args.repeats, 10)
    args.lengths += ',65536'
  sweeps = args.sweeps.split(',')
  peer_precisions = args.peer_precisions.split(',')
  unknown = sorted(set(peer_precisions) - set(PEER_PRECISIONS))
  if unknown:
    raise SystemExit(f'--peer_precisions: {",".join(unknown)} is not a '
                     f'precision; use a comma-separated subset of '
                     f'{",".join(PEER_PRECISIONS)}.')
  rate = harness.matmul_rate()
  print(f'{provenance.device()}: float32 matmul '
        f'{rate / 1e9:.0f} GFLOP/s (2048x2048)', flush=True)
  # Rows of sweeps not run now are kept from the last results.
  rows = []
  previous = os.path.join(args.out, 'latest.json')
  if os.path.exists(previous):
    with open(previous) as f:
      rows = [r for r in json.load(f) if r['sweep'] not in sweeps]
  t0 = time.time()
  command = 'python -m benchmarks.run ' + ' '.join(
      sys.argv[1:] if argv is None else argv)
  # Results are written after every sweep, so a failure keeps the rest.
  for name in sweeps:
    print(name, flush=True)
    if name == 'compile':  # its own table; no rows in latest.json
      compile_time.main([f'--out={args.out}'])
      continue
    if name == 'attention':  # likewise; from shapes, seconds
      attention_cost.main([f'--seq_len={args.seq_len}', f'--out={args.out}'])
      continue
    if name == 'decode':
      decode_speed.main([f'--model={args.decoder}', f'--out={args.out}'])
      continue
    if name == 'precision':  # its own table: float32 against bfloat16
      precision.main([f'--out={args.out}'])
      continue
    if name == 'packing':  # its own table: packed against one per row
      packing.main([f'--seq_len={args.seq_len}', f'--out={args.out}'])
      continue
    rows = [r for r in rows if r['sweep'] != name]
    if name == 'methods':
      rows += sweep_methods(args.encoder, 32, args.seq_len, args.repeats, rate)
      rows += sweep_methods(args.decoder, 8, args.seq_len, args.repeats, rate)
    elif name == 'prefix_length':
      lengths = [int(x) for x in args.lengths.split(',')]
      rows += sweep_prefix_length(args.encoder, lengths, args.prefix_batch,
                                  args.seq_len, args.repeats, rate)
    elif name == 'peer':
      # bfloat16 rows' FLOP floor: the bf16 x bf16 -> float32 rate.
      rates = {p: rate if p == 'float32' else harness.matmul_rate(
          dtype=jnp.bfloat16, result=jnp.float32) for p in peer_precisions}
      rows += sweep_peer(args.decoder, 8, args.seq_len, args.repeats, rates,
                         peer_precisions)
    elif name == 'mixed':
      rows += sweep_mixed(args.encoder, 4, 8, args.seq_len, args.repeats)
    else:
      raise SystemExit(f'--sweeps: {name!r} is not a sweep; known: methods, '
                       'prefix_length, peer, mixed, attention, compile, '
                       'decode, precision, packing.')
    stamp = dict(command=command, commit=provenance.git_commit(('benchmarks/results',)),
                 date=datetime.date.today().isoformat())
    rows = [r if 'commit' in r else dict(r, **stamp) for r in rows]
    write(rows, command, rate, time.time() - t0, args.out)


def write(rows: list, command: str, rate: float, seconds: float,
          out: str) -> None:
  meta = dict(
      command=command, commit=provenance.git_commit(('benchmarks/results',)),
      date=datetime.date.today().isoformat(),
      device=provenance.device(), platform=jax.default_backend(),
      devices=jax.device_count(), cpu_count=os.cpu_count(),
      jax=jax.__version__, matmul_flops_per_s=rate,
      process_peak_rss_bytes=harness.process_peak_rss(),
      device_peak_bytes=harness.device_peak_bytes(), wall_seconds=seconds)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'latest.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, 'meta.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  paths = report.write(rows, meta, out)
  print('wrote', ', '.join([os.path.join(out, 'latest.json')] + paths),
        flush=True)


if __name__ == '__main__':
  main()
