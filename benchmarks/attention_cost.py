r"""Where a method's attention cost goes: XLA's account (bytes accessed and
FLOPs) of one attention layer, forward and forward + backward, for the
frozen model's keys alone, NTK-Attention's extra term and explicit
prefixes, at MiniLM's and SmolLM2's head shapes.

  python -m benchmarks.attention_cost [--batch=8] [--seq_len=128] \
      [--prefix_lengths=16,256] [--out=benchmarks/results]

Compiled, nothing timed: the figures do not depend on what else the
machine runs. On a CPU the step-time ratios of `make bench` follow the
bytes more than the FLOPs (latest.md's step_bytes_xla and step_flops_xla
columns: NTK-Attention adds under 1% of SmolLM2's step FLOPs and about 9%
of its bytes); this shows which part of the attention layer they come
from. Prints the table and writes attention_cost.json / .md to --out.
"""
import argparse
import os

import jax
import jax.numpy as jnp

from benchmarks import harness
from ntk_prefix import atomic
from ntk_prefix.models import attention
from ntk_prefix.models.hooks import NtkState

# (heads, kv_heads, head_dim, causal) of the embedded models.
SHAPES = {'minilm': (12, 12, 32, False), 'smollm2': (9, 3, 64, True)}


def cost(fn, *args) -> tuple:
  """(bytes accessed, flops) of fn compiled for args, per XLA."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return analysis['bytes accessed'], analysis['flops']


def layer_costs(shape: tuple, batch: int, length: int,
                prefix_lengths: list) -> list:
  heads, kv_heads, head_dim, causal = shape
  f32 = jnp.float32
  q = jax.ShapeDtypeStruct((batch, length, heads, head_dim), f32)
  kv = jax.ShapeDtypeStruct((batch, length, kv_heads, head_dim), f32)
  mask = jnp.ones((batch, length), bool)
  out = jnp.ones((batch, length, heads, head_dim), f32)  # a cotangent

  def keys(q, k, v):
    return jnp.sum(attention.attend(q, k, v, key_mask=mask, causal=causal)
                   * out)

  def ntk(q, k, v, z, k_state):
    state = NtkState(z=z, k=k_state, projection=None, phi_mask=None)
    return jnp.sum(attention.attend(q, k, v, key_mask=mask, causal=causal,
                                    ntk=state) * out)

  def prefix(q, k, v, pk, pv):
    return jnp.sum(attention.attend(q, k, v, key_mask=mask, causal=causal,
                                    prefix_k=pk, prefix_v=pv) * out)

  z = jax.ShapeDtypeStruct((heads, head_dim, head_dim), f32)
  k_state = jax.ShapeDtypeStruct((heads, head_dim), f32)
  cases = [('frozen (keys only)', keys, (q, kv, kv)),
           ('ntk_attention', ntk, (q, kv, kv, z, k_state))]
  for m in prefix_lengths:
    p = jax.ShapeDtypeStruct((1, m, kv_heads, head_dim), f32)
    cases.append((f'explicit prefix m={m}', prefix, (q, kv, kv, p, p)))
  rows = []
  for name, fn, args in cases:
    grad = jax.grad(fn, argnums=tuple(range(len(args))))
    fwd_bytes, fwd_flops = cost(fn, *args)
    bytes_, flops = cost(grad, *args)
    rows.append(dict(case=name, forward_bytes=fwd_bytes,
                     forward_flops=fwd_flops, grad_bytes=bytes_,
                     grad_flops=flops))
  for r in rows:
    r['grad_bytes_ratio'] = r['grad_bytes'] / rows[0]['grad_bytes']
    r['grad_flops_ratio'] = r['grad_flops'] / rows[0]['grad_flops']
  return rows


def markdown(tables: dict, meta: dict) -> str:
  lines = [f"One attention layer (batch {meta['batch']} x {meta['seq_len']}"
           f", float32), XLA's cost analysis on {meta['device']}, jax "
           f"{meta['jax']}: forward, and forward + backward (gradients of "
           'q, k, v and the method state). Ratios are to the frozen '
           "layer's forward + backward.",
           f"Command: `{meta['command']}`; commit {meta['commit']}; "
           f"{meta['date']}.", '']
  for model, rows in tables.items():
    lines += [f'### {model}', '', '| case | forward MB | forward MFLOP | '
              'fwd+bwd MB | fwd+bwd MFLOP | bytes × frozen | FLOPs × frozen |',
              '|---|---:|---:|---:|---:|---:|---:|']
    lines += [f"| {r['case']} | {r['forward_bytes'] / 1e6:.1f} | "
              f"{r['forward_flops'] / 1e6:.0f} | {r['grad_bytes'] / 1e6:.1f} "
              f"| {r['grad_flops'] / 1e6:.0f} | {r['grad_bytes_ratio']:.2f} | "
              f"{r['grad_flops_ratio']:.2f} |" for r in rows]
    lines.append('')
  return '\n'.join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq_len', type=int, default=128)
  p.add_argument('--prefix_lengths', default='16,256')
  p.add_argument('--models', default='minilm,smollm2')
  p.add_argument('--out', default='benchmarks/results')
  args = p.parse_args(argv)
  lengths = [int(m) for m in args.prefix_lengths.split(',') if m]
  tables = {}
  for model in args.models.split(','):
    if model not in SHAPES:
      raise SystemExit(f'--models: {model!r} is not one of {list(SHAPES)}')
    tables[model] = layer_costs(SHAPES[model], args.batch, args.seq_len,
                                lengths)
  meta = harness.stamp('benchmarks.attention_cost', argv, args.out,
                       batch=args.batch, seq_len=args.seq_len)
  text = markdown(tables, meta)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  atomic.write_json(os.path.join(args.out, 'attention_cost.json'),
                    {'meta': meta, 'tables': tables})
  atomic.write_text(os.path.join(args.out, 'attention_cost.md'), text)
  return tables


if __name__ == '__main__':
  main()
