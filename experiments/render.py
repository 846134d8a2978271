"""results.json -> table.md and a plot of the metric against trainable
parameters. Everything shown is read from results.json, so
`python -m experiments.redraw DIR` redraws any results folder."""
import json
import math
import os
import textwrap

import numpy as np

from ntk_prefix import atomic


def mean_std(values) -> tuple:
  """Mean and sample standard deviation (0 for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _params(n: int) -> str:
  return f'{n:,}' if n < 10 ** 6 else f'{n / 1e6:.1f}M'


def _mean_std(values: list, scale: float) -> str:
  """'m ± s', or the single value of a deterministic row (no spread to
  show: an unadapted model decodes greedily once)."""
  digits = 1 if scale != 1 else 3
  m, s = mean_std(values)
  if len(values) == 1:
    return f'{m:.{digits}f} (1 run)'
  return f'{m:.{digits}f} ± {s:.{digits}f}'


def edge_side(record: dict, key: str = '') -> str:
  """'top' or 'bottom' when a searched value (of `key`, or of any searched
  key) was chosen at that end of its grid (the best may lie beyond it, in
  that direction), else ''."""
  for k in [key] if key else record['chosen']:
    value = record['chosen'][k]
    grid = sorted({p['overrides'][k] for p in record['search']})
    if len(grid) > 1 and value in (grid[0], grid[-1]):
      return 'top' if value == grid[-1] else 'bottom'
  return ''


def grid_edge(record: dict) -> str:
  """' (edge)' when the search ended with the best still at an end of what
  it searched (at its cap of extra points). Records of the fixed-grid search
  (before 2026-11-30, no 'edge' key) keep their old 'grid top/bottom'."""
  if 'edge' in record:
    return ' (edge)' if record['edge'] else ''
  side = edge_side(record)
  return f' (grid {side})' if side else ''


def runs_spent(record: dict) -> int:
  return record.get('runs_spent',
                    len(record['search']) + len(record['runs']) - 1)


def task_table(task: str, block: dict, results: dict) -> list:
  metric, scale = results['metric'], results.get('scale', 1.0)
  extra = [k for k in block['records'][0]['runs'][0]['scores']
           if k != metric] if block['records'] else []
  # The selection metric of every seed at the chosen point (results before
  # 2026-12-01 lack it): where the reported score cannot tell methods
  # apart (GSM8K at this size), the held-out loss still can.
  select_label = results.get('select_label', 'held-out by lr')
  held = any('select' in run for r in block['records'] for run in r['runs'])
  head = (f"| method | trainable params | {results['metric_label']} "
          f"(mean ± std, {results['seeds']} seeds) | per seed | "
          + ''.join(f'{results.get("labels", {}).get(k, k)} | ' for k in extra)
          + (f"{select_label.removesuffix(' by lr')} at the chosen point | "
             if held else '')
          + f'chosen | {select_label} per searched point | runs | s/run |')
  name = results['task_names'].get(task, task)
  if 'majority' in block:  # what always answering one label scores
    scale = results.get('scale', 1.0)
    rate = (f"{scale * block['majority']:.1f}%" if scale == 100
            else f"{block['majority']:.3f}")
    name += f' — majority class {rate}'
  lines = [f"### {name}\n", head,
           '|---|---:|---:|---|' + '---:|' * (len(extra) + held) +
           '---|---|---:|---:|']
  for r in block['records']:
    vals = [scale * run['scores'][metric] for run in r['runs']]
    cells = [r['method'], _params(r['trainable_params']),
             f'**{_mean_std(vals, scale)}**',
             ' / '.join(f'{v:.1f}' for v in vals)]
    for k in extra:
      cells.append(_mean_std([scale * run['scores'][k] for run in r['runs']],
                             scale))
    if held:  # '—' where a row's results predate it
      chosen = [run['select'] for run in r['runs'] if 'select' in run]
      cells.append(_mean_std(chosen, 1.0) if chosen else '—')
    cells.append((', '.join(f'{k.split(".")[-1]}={v}'
                            for k, v in r['chosen'].items()) or '—')
                 + grid_edge(r))
    points = sorted(r['search'],
                    key=lambda p: p['overrides'].get('optimizer.lr', 0))
    cells.append(' / '.join(
        f"{p['overrides'].get('optimizer.lr', '')}: {p['select']:.3f}"
        for p in points) or '—')
    cells.append(str(runs_spent(r)))
    walls = [run['wall_seconds'] for run in r['runs']
             if run['wall_seconds'] is not None]  # None: not recorded
    cells.append(f'{sum(walls) / len(walls):.0f}' if walls else '—')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def papers_table(results: dict) -> list:
  rows = results.get('papers', [])
  if not rows:
    return []
  lines = ['### The seed papers\' reported numbers (their models, full data)'
           '\n', '| task | method | reported | model | source |',
           '|---|---|---:|---|---|']
  for p in rows:
    lines.append(f"| {p['task']} | {p['method']} | {p['value']} | "
                 f"{p['model']} | {p['source']} |")
  return lines


def devices(results: dict) -> str:
  """' Runs ran on: X.' from the runs' records (older results lack it)."""
  found = sorted({run.get('device') or ''
                  for block in results['tasks'].values()
                  for r in block['records'] for run in r['runs']} - {''})
  if not found:
    return ''
  return f" Runs ran on: {', '.join(found)} (s/run is that device's)."


def run_commits(results: dict) -> str:
  """' Runs trained at: a, b.' from the rows' records (older results
  lack them): the code that produced the numbers, not only the table's."""
  found = sorted({c for block in results['tasks'].values()
                  for r in block['records'] for c in r.get('commits', [])})
  dirty = [c for c in found if c.endswith('+changes')]
  note = (f" Runs at {', '.join(dirty)} trained in a checkout with "
          'uncommitted changes: only the commit is on record.'
          if dirty else '')
  return f" Runs trained at: {', '.join(found)}.{note}" if found else ''


def markdown(results: dict) -> str:
  out = [f"## {results['title']}\n", results['caption'] + '\n',
         f"Command: `{results['command']}`; commit {results['commit']}; "
         f"{results['date']}.{devices(results)}{run_commits(results)}\n"]
  for task, block in results['tasks'].items():
    if block['records']:
      out += task_table(task, block, results) + ['']
  out += papers_table(results)
  for note in results.get('notes', []):
    out.append(f'\n{note}')
  return '\n'.join(out) + '\n'


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  tasks = [t for t, b in results['tasks'].items() if b['records']]
  if not tasks:
    return
  metric, scale = results['metric'], results.get('scale', 1.0)
  fig, axes = plt.subplots(1, len(tasks), figsize=(7.4 * len(tasks), 4.4),
                           squeeze=False)
  colors, markers = {}, {'': 'o'}  # one colour per method, one marker per
  # preset, the same in every panel
  for ax, task in zip(axes[0], tasks):
    points = []
    for r in results['tasks'][task]['records']:
      m, s = mean_std([scale * run['scores'][metric] for run in r['runs']])
      if not r['trainable_params']:  # the model before adaptation: no x
        ax.axhline(m, color='0.5', linestyle='--', linewidth=1,
                   label=f"{r['method']} (nothing trained): {m:.1f}")
        continue
      x = r['trainable_params']
      # A method's presets share its colour and x: open markers tell them
      # apart, named in the legend (labels beside the points collided).
      base, _, preset = r['method'].partition(':')
      color = colors.setdefault(base, f'C{len(colors) % 10}')
      marker = markers.setdefault(preset, 'os^Dv<>'[len(markers) % 7])
      ax.errorbar([x], [m], yerr=[s], fmt=marker, color=color, capsize=3,
                  markerfacecolor='none' if preset else color,
                  label=f"{r['method']}: {m:.1f}")
      points.append((x, m, r['method']))
    if ax.get_legend_handles_labels()[1]:
      ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=7,
                frameon=False)
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if points:  # whole decades, with room for the outermost labels
      xs = [x for x, _, _ in points]
      ax.set_xlim(10 ** math.floor(math.log10(min(xs)) - 0.3),
                  10 ** math.ceil(math.log10(max(xs)) + 0.3))
    else:  # only the model before adaptation so far
      ax.set_xticks([])
    low, high = ax.get_ylim()
    if low < 0:  # scores are never negative; an all-zero row reached -0.04
      high = max(high, 1.0)
      ax.set_ylim(-0.03 * high, high)
    ax.set_xlabel('trainable parameters (log)')
    ax.set_ylabel(results['metric_label'])
    ax.set_title(results['task_names'].get(task, task))
    ax.grid(alpha=0.3)
  title = f"{results['title']} ({results['seeds']} seeds, mean ± std)"
  fig.suptitle(textwrap.fill(title, 38 * len(tasks) + 20), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def render(folder: str) -> str:
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)
  text = markdown(results)
  atomic.write_text(os.path.join(folder, 'table.md'), text)
  plot(results, os.path.join(folder, 'metric_vs_params.png'))
  return text
