r"""Greedy decoding speed with the KV cache, per method: what the generation
tables spend their decoding time on.

  python -m benchmarks.decode_speed [--model=smollm2] [--batch=25] \
      [--prompt_len=120] [--new_tokens=32] [--repeats=3]

Each method's state is its init (zeros where it starts at the frozen
model: the cost does not depend on the values). Reports the prefill time,
the median time of one new token for the whole batch, tokens/s, and XLA's
bytes accessed and FLOPs of one step (compiled with the cache donated, as
generate runs it). Prints the table and writes decode_speed.json / .md to
--out.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from ntk_prefix import atomic, generate, methods

METHODS = methods.UNADAPTED + methods.ADAPTING  # every registered method


def measure(cfg, frozen, method_name: str, batch: int, prompt_len: int,
            new_tokens: int, repeats: int) -> dict:
  method = methods.get(method_name, cfg)
  state = method.init(jax.random.PRNGKey(0), frozen)
  decoder = generate.Decoder(cfg, frozen, method, state)
  ids = np.random.default_rng(0).integers(5, cfg.vocab_size,
                                          (batch, prompt_len), np.int32)
  mask = np.ones_like(ids)
  prefill, steps = [], []
  for round_ in range(repeats + 1):  # round 0 compiles: not counted
    t0 = time.perf_counter()
    logits, cache, hooks = decoder.prefill(ids, mask, new_tokens)
    token = jnp.argmax(logits[:, -1], -1)
    token.block_until_ready()
    prefill += [time.perf_counter() - t0] if round_ else []
    for _ in range(new_tokens - 1):
      t0 = time.perf_counter()
      logits, cache, hooks = decoder.step(token, cache, hooks)
      token = jnp.argmax(logits[:, -1], -1)
      token.block_until_ready()
      steps += [time.perf_counter() - t0] if round_ else []
  compiled = decoder.lower_step(token, cache, hooks).compile()
  step = float(np.median(steps))
  return dict(method=method_name,
              prefill_seconds=float(np.median(prefill)),
              step_seconds=step, tokens_per_s=batch / step,
              step_bytes_xla=harness.xla_cost(compiled, 'bytes accessed'),
              step_flops_xla=harness.xla_cost(compiled, 'flops'))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='smollm2')
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--batch', type=int, default=25)
  p.add_argument('--prompt_len', type=int, default=120)
  p.add_argument('--new_tokens', type=int, default=32)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  cfg, frozen = harness.load_model(args.model)
  rows = []
  for name in args.methods.split(','):
    rows.append(measure(cfg, frozen, name, args.batch, args.prompt_len,
                        args.new_tokens, args.repeats))
    r = rows[-1]
    print(f"  {name:14s} prefill {r['prefill_seconds']:.2f} s, "
          f"{r['step_seconds']:.3f} s/token, {r['tokens_per_s']:.0f} tok/s",
          flush=True)
  meta = harness.stamp('benchmarks.decode_speed', argv, args.out,
                       model=os.path.basename(args.model.rstrip('/')),
                       batch=args.batch, prompt_len=args.prompt_len,
                       new_tokens=args.new_tokens, repeats=args.repeats)
  lines = [f"Greedy decoding with the KV cache, {meta['model']}, batch "
           f"{args.batch}, prompts of {args.prompt_len} tokens, "
           f"{args.new_tokens} new tokens; {meta['device']}, jax "
           f"{meta['jax']}; medians of {args.repeats} rounds after a "
           'compiling one.',
           f"Command: `{meta['command']}`; commit {meta['commit']}; "
           f"{meta['date']}.", '',
           '| method | prefill (s) | s per new token (whole batch) | '
           'tokens/s | XLA step GB | XLA step GFLOP |',
           '|---|---:|---:|---:|---:|---:|']
  lines += [f"| {r['method']} | {r['prefill_seconds']:.2f} | "
            f"{r['step_seconds']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['step_bytes_xla'] / 1e9:.2f} | "
            f"{r['step_flops_xla'] / 1e9:.1f} |" for r in rows]
  os.makedirs(args.out, exist_ok=True)
  atomic.write_json(os.path.join(args.out, 'decode_speed.json'),
                    {'meta': meta, 'rows': rows})
  atomic.write_text(os.path.join(args.out, 'decode_speed.md'),
                    '\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return rows


if __name__ == '__main__':
  main()
