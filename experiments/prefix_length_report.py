"""The prefix-length table (table.md) and its two-panel figure, from
results.json alone."""
import os

import numpy as np

from experiments.render import mean_std
from ntk_prefix import atomic, methods

PREFIX_METHODS = methods.PREFIX_METHODS  # every explicit-prefix method
# Drawn as lines: the m = infinity methods, the weight-space methods and
# the frozen model.
REFERENCES = (methods.PREFIX_SUMMARIES + methods.WEIGHT_SPACE +
              methods.UNADAPTED)


def write(folder: str, results: dict, figure: bool = True) -> str:
  """table.md and (with `figure`) prefix_length.png of `folder` from
  `results`."""
  text = render(results)
  atomic.write_text(os.path.join(folder, 'table.md'), text)
  if figure:
    plot(results, os.path.join(folder, 'prefix_length.png'))
  return text


def is_prefix_length(results: dict) -> bool:
  return 'compressed' in results  # only this table has compressed points


def render(results: dict) -> str:
  metric, scale = results['metric'], results['scale']
  lines = [f"## {results['title']}\n", results['caption'] + '\n',
           f"Command: `{results['command']}`; commit {results['commit']}; "
           f"{results['date']}.\n",
           f"| method | m | {results['metric_label']} (mean ± std) | per "
           'seed | chosen (compressed rows: the fit) | runs | train step (s) '
           '| peak memory (MB) |',
           '|---|---:|---:|---|---|---:|---:|---:|']
  for r in results['records']:
    vals = [scale * run['scores'][metric] for run in r['runs']]
    m, s = mean_std(vals)
    cost = r.get('cost') or {}
    peak = cost.get('peak_bytes')
    length = ('∞' if r['method'] in methods.PREFIX_SUMMARIES else
              str(r['prefix_length']) if r.get('prefix_length') else '—')
    chosen = ', '.join(f'{k.split(".")[-1]}={v}'
                       for k, v in r.get('chosen', {}).items()) or '—'
    step = cost.get('step_seconds')
    lines.append(
        f"| {r['method']} | {length} | **{m:.1f} ± {s:.1f}** | "
        f"{' / '.join(f'{v:.1f}' for v in vals)} | {chosen}"
        f"{' (edge)' if r.get('edge') else ''} | "
        f"{r.get('runs_spent', '—')} | "
        f"{'—' if step is None else f'{step:.3f}'} | "
        f"{'—' if peak is None else f'{peak / 2 ** 20:.0f}'} |")
  for comp in results.get('compressed', []):
    vals = [scale * run['scores'][metric] for run in comp['runs']]
    m, s = mean_std(vals)
    lines.append(
        f"| {comp['method']} | {comp['prefix_length']} | **{m:.1f} ± {s:.1f}**"
        f" | {' / '.join(f'{v:.1f}' for v in vals)} | held-out attention "
        f"error {np.mean([r['fitted_error'] for r in comp['runs']]):.1e} "
        f"(closed form {np.mean([r['closed_form_error'] for r in comp['runs']]):.1e})"
        f" | — | at {comp['into']}'s cost | — |")
  return '\n'.join(lines) + '\n'


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  metric, scale = results['metric'], results['scale']
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  memory = right.twinx()
  stats = lambda r: mean_std([scale * x['scores'][metric]
                                     for x in r['runs']])
  by = {}
  for r in results['records']:
    by.setdefault(r['method'], []).append(r)
  colors = {name: f'C{i}' for i, name in
            enumerate(PREFIX_METHODS + REFERENCES)}
  lengths = sorted({r['prefix_length'] for r in results['records']
                    if r['prefix_length']})
  for method in PREFIX_METHODS:
    rows = sorted(by.get(method, []), key=lambda r: r['prefix_length'])
    if not rows:
      continue
    ms = [r['prefix_length'] for r in rows]
    mean, std = zip(*(stats(r) for r in rows))
    left.errorbar(ms, mean, yerr=std, marker='o', capsize=3,
                  color=colors.get(method), label=method)
    right.plot(ms, [r['cost']['step_seconds'] for r in rows], marker='o',
               color=colors.get(method), label=f'{method}: step time')
    peaks = [r['cost']['peak_bytes'] for r in rows]
    if all(p is not None for p in peaks):
      memory.plot(ms, [p / 2 ** 20 for p in peaks], marker='s', ls=':',
                  color=colors.get(method), label=f'{method}: peak memory')
  for method in REFERENCES:
    for r in by.get(method, []):
      mean, std = stats(r)
      label = (f'{method} (m = ∞)' if method in methods.PREFIX_SUMMARIES
               else 'frozen model' if method in methods.UNADAPTED
               else method)
      if method in methods.PREFIX_SUMMARIES:
        left.axhspan(mean - std, mean + std, color=colors[method], alpha=0.2)
      left.axhline(mean, color=colors[method], ls='--', label=label)
      if r.get('cost'):
        right.axhline(r['cost']['step_seconds'], color=colors[method],
                      ls='--', label=f'{label}: step time')
        if (r['cost'].get('peak_bytes') and
            method in methods.PREFIX_SUMMARIES):
          memory.axhline(r['cost']['peak_bytes'] / 2 ** 20,
                         color=colors[method], ls=':',
                         label=f'{label}: peak memory')
  for comp in results.get('compressed', []):
    mean, std = mean_std([scale * x['scores'][metric]
                                 for x in comp['runs']])
    left.errorbar([comp['prefix_length']], [mean], yerr=[std], marker='*',
                  markersize=14, color=colors.get(comp['source']), ls='none',
                  label=f"{comp['method']} (m={comp['prefix_length']})")
  for ax in (left, right):
    ax.set_xscale('log', base=2)
    ax.set_xlabel('prefix length m')
    if lengths:
      ax.set_xticks(lengths, [str(m) for m in lengths])
  left.set_ylabel(results['metric_label'])
  left.set_title(f"{results['task']}: score against m")
  right.set_ylabel('train step (s), solid and dashed')
  memory.set_ylabel('peak memory (MB), dotted')
  right.set_title('cost against m')
  left.legend(fontsize=7, loc='best')
  handles = [h for ax in (right, memory)
             for h in ax.get_legend_handles_labels()[0]]
  right.legend(handles, [h.get_label() for h in handles], fontsize=7,
               loc='upper left')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
