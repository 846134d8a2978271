"""Tables and the step-time plot of a benchmark results folder.

  python -m benchmarks.report benchmarks/results   # redraw from latest.json
"""
import json
import os
import sys


def _mb(x):
  return '' if x is None else f'{x / 2 ** 20:,.1f}'


def _gb(x):  # '—': a row measured before the column existed
  return '—' if x is None else f'{x / 1e9:.2f}'


def _r(x, fmt='{:.2f}'):
  return '' if x is None else fmt.format(x)


def _rounds(r) -> str:  # '—': a row measured before the column existed
  rounds = r.get('ratio_to_frozen_rounds')
  return '—' if rounds is None else ' / '.join(f'{x:.2f}' for x in rounds)


def methods_table(rows: list, model: str) -> str:
  rows = [r for r in rows if r['sweep'] == 'methods' and r['model'] == model]
  if not rows:
    return ''
  r0 = rows[0]
  out = [f"### {model}: batch {r0['batch']} x {r0['seq_len']} tokens\n",
         '| method | trainable params | train step (s) | × frozen | '
         '× frozen, each round | forward (s) | tokens/s | % of FLOP floor | '
         'XLA step memory (MiB) | '
         'XLA step traffic (GB) | params + Adam (MiB) | '
         '(params + Adam) / params | compile (s) |',
         '|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    state = r['trainable_bytes'] + r['optimizer_bytes']
    out.append(
        f"| {r['method']} | {r['params']:,} | {r['step_seconds']:.3f} | "
        f"{_r(r['ratio_to_frozen'])} | {_rounds(r)} | "
        f"{r['forward_seconds']:.3f} | "
        f"{r['tokens_per_s']:,.0f} | {100 * r['floor_fraction']:.0f}% | "
        f"{_mb(r['peak_memory_bytes'])} | {_gb(r.get('step_bytes_xla'))} | "
        f"{_mb(state)} | "
        f"{state / r['trainable_bytes']:.3f} | {r['compile_seconds']:.1f} |")
  return '\n'.join(out) + '\n'


def prefix_table(rows: list) -> str:
  rows = [r for r in rows if r['sweep'] == 'prefix_length']
  if not rows:
    return ''
  floor = next(r for r in rows if r['method'] == 'frozen')
  methods = list(dict.fromkeys(r['method'] for r in rows
                               if r['method'] != 'frozen'))
  lengths = sorted({r['prefix_length'] for r in rows if r['prefix_length']})
  out = [f"### {floor['model']}: batch {floor['batch']} x {floor['seq_len']}"
         f" tokens; frozen-model step {floor['step_seconds']:.3f} s, "
         f"{_mb(floor['peak_memory_bytes'])} MiB\n",
         '| m | ' + ' | '.join(f'{m} s (× frozen) | {m} MiB'
                               for m in methods) + ' |',
         '|---:|' + '---:|---:|' * len(methods)]
  for m in lengths:
    cells = []
    for meth in methods:
      r = next((r for r in rows if r['method'] == meth and
                r['prefix_length'] == m), None)
      cells += (['', ''] if r is None else
                [f"{r['step_seconds']:.3f} ({r['ratio_to_frozen']:.2f})",
                 _mb(r['peak_memory_bytes'])])
    out.append(f'| {m:,} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(out) + '\n'


def peer_table(rows: list) -> str:
  peer = [r for r in rows if r['sweep'] == 'peer']
  ours = [r for r in peer if 'peer' not in r]
  if not ours:
    return ''
  out = []
  titles = {'all_tokens': 'every token carries loss',
            'instruction': 'real E2E rows, loss on the answer only (PEFT '
                           'with logits_to_keep)'}
  # PEFT's modes and their times are in each row's `PEFT mode` cell.
  precisions = {'float32': 'float32 on both sides',
                'bfloat16': 'ours bf16 weights with float32 accumulation, '
                            'PEFT its faster bf16 mode'}
  # Rows from before the precision field were float32.
  key = lambda r: (r.get('peer_batch', 'all_tokens'),
                   r.get('precision', 'float32'))
  for group_key in dict.fromkeys(key(r) for r in ours):
    kind, precision = group_key
    group = [r for r in ours if key(r) == group_key]
    r0 = group[0]
    p0 = next(x for x in peer if 'peer' in x and key(x) == group_key)
    size = f"batch {r0['batch']} x {r0['seq_len']} tokens"
    if 'shape' in r0 and r0['shape'] != p0['shape']:  # packed: own layouts
      size = (f"batch {r0['batch']} ({r0['tokens']:,} real tokens): ours "
              f"{r0['shape'][0]} packed rows x {r0['shape'][1]}, PEFT "
              f"{p0['shape'][0]} x {p0['shape'][1]} padded to the longest")
    out += [f"### {r0['model']}, `{kind}`, {precision}: {size}, "
            f"{titles.get(kind, kind)}; "
            f"{precisions.get(precision, precision)}; same weights and token "
            'ids, alternating steps\n',
            '| method | ours (s) | PEFT (s) | PEFT mode | ours / PEFT | back '
            'to back: ours (s) | PEFT (s) | ours / PEFT | ours params | PEFT '
            'params | ours % of FLOP floor | PEFT % of FLOP floor |',
            '|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in group:
      p = next(x for x in peer if 'peer' in x and x['method'] == r['method']
               and key(x) == group_key)
      modes = p.get('peft_mode_seconds') or {}
      mode = p.get('peft_mode', precision) + (
          ' (' + ', '.join(f'{m} {t:.3f} s' for m, t in modes.items()) + ')'
          if len(modes) > 1 else '')
      out.append(f"| {r['method']} | {r['step_seconds']:.3f} | "
                 f"{p['step_seconds']:.3f} | {mode} | "
                 f"{r['ratio_to_peer']:.2f} | "
                 f"{_r(r.get('step_seconds_back_to_back'), '{:.3f}')} | "
                 f"{_r(p.get('step_seconds_back_to_back'), '{:.3f}')} | "
                 f"{_r(r.get('ratio_to_peer_back_to_back'))} | "
                 f"{r['params']:,} | {p['params']:,} | "
                 f"{100 * r['floor_fraction']:.0f}% | "
                 f"{100 * p['floor_fraction']:.0f}% |")
    if r0.get('floor_rate'):
      out.append(f"\nFLOP floor at {r0['floor_rate'] / 1e9:.0f} GFLOP/s "
                 f"({precision} matmul, 2048^3, this run).")
    out.append('')
  return '\n'.join(out)


def mixed_table(rows: list) -> str:
  rows = [r for r in rows if r['sweep'] == 'mixed']
  if not rows:
    return ''
  r0 = rows[0]
  out = [f"### {r0['model']}: {r0['adapters']} adapters x "
         f"{r0['batch'] // r0['adapters']} rows x {r0['seq_len']} tokens, "
         'forward only\n',
         '| method | one mixed pass (s) | one pass per adapter (s) | ratio |',
         '|---|---:|---:|---:|']
  for r in rows:
    out.append(f"| {r['method']} | {r['step_seconds']:.3f} | "
               f"{r['sequential_seconds']:.3f} | "
               f"{r['ratio_to_sequential']:.2f} |")
  return '\n'.join(out) + '\n'


def plot_prefix(rows: list, path: str):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [r for r in rows if r['sweep'] == 'prefix_length']
  if not rows:
    return None
  floor = next(r for r in rows if r['method'] == 'frozen')
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  measured = dict.fromkeys(r['method'] for r in rows if r['method'] != 'frozen')
  for meth, style in zip(measured, ('o-', 's-', '^-', 'd-', 'v-', 'x-')):
    rs = sorted((r for r in rows if r['method'] == meth),
                key=lambda r: r['prefix_length'])
    if not rs:
      continue
    m = [r['prefix_length'] for r in rs]
    axes[0].plot(m, [r['step_seconds'] for r in rs], style, label=meth)
    axes[1].plot(m, [r['peak_memory_bytes'] / 2 ** 20 for r in rs], style,
                 label=meth)
  axes[0].axhline(floor['step_seconds'], color='k', ls='--',
                  label='frozen model (floor)')
  axes[1].axhline(floor['peak_memory_bytes'] / 2 ** 20, color='k', ls='--',
                  label='frozen model (floor)')
  for ax, label in zip(axes, ('train step (s)', 'XLA step memory (MiB)')):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('prefix length m')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which='both')
  axes[0].legend()
  fig.suptitle(f"{floor['model']}, batch {floor['batch']} x "
               f"{floor['seq_len']}: training step against prefix length")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(rows: list, meta: dict, out_dir: str) -> list:
  models = []
  for r in rows:
    if r['sweep'] == 'methods' and r['model'] not in models:
      models.append(r['model'])
  runs = []
  for r in rows:
    run = (r.get('command'), r.get('commit'), r.get('date'))
    if run not in runs:
      runs.append(run)
  made = '; '.join(f'`{c}` at commit {g} on {d}' for c, g, d in runs)
  parts = [
      '# Benchmark results\n',
      f"Made by {made}. Device {meta['device']} ({meta['platform']}, {meta['cpu_count']} "
      f"CPU cores), jax {meta['jax']}. Measured float32 matmul rate "
      f"{meta['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s; the FLOP floor of a "
      'step is 4 × matmul parameters × tokens at that rate. Times are '
      'medians after compilation and a warm-up step.\n']
  if models:
    parts.append('## Every method, same model and batch\n')
    parts += [methods_table(rows, m) for m in models]
  if any(r['sweep'] == 'prefix_length' for r in rows):
    parts += ['## Cost against prefix length\n', prefix_table(rows),
              '![step time against m](step_time_vs_m.png)\n']
  if any(r['sweep'] == 'peer' for r in rows):
    parts += ['## Against Hugging Face PEFT (PyTorch, CPU)\n', peer_table(rows)]
  if any(r['sweep'] == 'mixed' for r in rows):
    parts += ['## Mixed-adapter batches\n', mixed_table(rows)]
  md = os.path.join(out_dir, 'latest.md')
  with open(md, 'w') as f:
    f.write('\n'.join(parts))
  paths = [md]
  png = plot_prefix(rows, os.path.join(out_dir, 'step_time_vs_m.png'))
  if png:
    paths.append(png)
  return paths


def main():
  out_dir = sys.argv[1] if len(sys.argv) > 1 else 'benchmarks/results'
  with open(os.path.join(out_dir, 'latest.json')) as f:
    rows = json.load(f)
  with open(os.path.join(out_dir, 'meta.json')) as f:
    meta = json.load(f)
  print('\n'.join(write(rows, meta, out_dir)))


if __name__ == '__main__':
  main()
