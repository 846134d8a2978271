r"""The NTK figures of the notebooks and the README, from library calls.

  python -m ntk_prefix.ntk.figures --out=docs/figures          # minutes
  python -m ntk_prefix.ntk.figures --out=docs/figures --full   # m to 2^17 / 2^18

Writes ntk_convergence.png, ntk_approximation.png and ntk_results.json (the
numbers behind both, with the command that made them).
"""
import argparse
import datetime
import json
import os
import sys

import numpy as np

from ntk_prefix.ntk import approximation, stylized

# The notebooks' defaults (a few minutes on 2 cores); --full goes further.
CONVERGENCE_LENGTHS = (2, 8, 32, 128, 512, 2048, 8192, 32768, 65536)
APPROXIMATION_LENGTHS = (2, 16, 128, 1024, 8192, 65536)


def _plt():
  import matplotlib.pyplot as plt  # notebooks keep their inline backend
  return plt


def convergence_figure(results: list):
  """Loss curves, kernel drift / prefix movement and K_0's spectrum against
  prefix length m, from `stylized.sweep` (both scalings when present)."""
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  cmap = plt.get_cmap('viridis')
  ntk = [r for r in results if r['scaling'] == 'ntk'] or results
  for i, r in enumerate(ntk):
    axes[0].plot(r['loss'], color=cmap(i / max(len(ntk) - 1, 1)),
                 label=f"m={r['m']}")
  axes[0].set_yscale('log')
  axes[0].set_xlabel('gradient-descent step')
  axes[0].set_ylabel('training loss')
  axes[0].set_title(f"loss, {ntk[0]['scaling']} scaling, step 1/lambda_max(K_0)")
  axes[0].legend(fontsize=7, ncol=2)
  for scaling, style in (('ntk', '-'), ('softmax', '--')):
    rs = [r for r in results if r['scaling'] == scaling]
    if not rs:
      continue
    ms = [r['m'] for r in rs]
    axes[1].plot(ms, [r['checks'][-1]['drift'] for r in rs], 'o' + style,
                 color='C0', label=f'kernel drift ({scaling})')
    axes[1].plot(ms, [r['checks'][-1]['distance'] for r in rs], 's' + style,
                 color='C1', label=f'||P_T-P_0|| / ||P_0|| ({scaling})')
    axes[1].plot(ms, [r['checks'][-1]['max_row_distance'] for r in rs],
                 '^' + style, color='C2', label=f'max row movement ({scaling})')
  axes[1].set_xscale('log', base=2)
  axes[1].set_yscale('log')
  axes[1].set_xlabel('prefix length m')
  axes[1].set_title(f"after {len(results[0]['loss']) - 1} steps")
  axes[1].legend(fontsize=7)
  ms = [r['m'] for r in ntk]
  axes[2].plot(ms, [r['lambda_max'] for r in ntk], 'o-', label='lambda_max(K_0)')
  axes[2].plot(ms, [r['lambda_min'] for r in ntk], 's-', label='lambda_min(K_0)')
  axes[2].set_xscale('log', base=2)
  axes[2].set_yscale('log')
  axes[2].set_xlabel('prefix length m')
  axes[2].set_title(f"NTK spectrum at initialisation ({ntk[0]['scaling']} scaling)")
  axes[2].legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3, which='both')
  fig.tight_layout()
  return fig


def approximation_figure(rows: list):
  """Held-out relative error against m, one panel per problem."""
  plt = _plt()
  problems = sorted({r['problem'] for r in rows}, reverse=True)
  fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.4),
                           squeeze=False)
  for ax, problem in zip(axes[0], problems):
    rs = [r for r in rows if r['problem'] == problem]
    keys = sorted({(r['feature_map'], r['num_features'], r['estimator'])
                   for r in rs})
    for fmap, nf, est in keys:
      sel = sorted((r for r in rs if (r['feature_map'], r['num_features'],
                                      r['estimator']) == (fmap, nf, est)),
                   key=lambda r: r['m'])
      ax.plot([r['m'] for r in sel], [r['error'] for r in sel],
              'o-' if est == 'trained' else 's--',
              label=f'{fmap} ({nf} features), {est.replace("_", " ")}')
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('prefix length m')
    ax.set_ylabel('held-out relative error')
    ax.set_title(f'NTK-Attention vs explicit prefix: {problem} weights')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def summary(results: list, rows: list) -> dict:
  """The trends the README states, computed (never typed)."""
  out = {}
  for scaling in ('ntk', 'softmax'):
    rs = [r for r in results if r['scaling'] == scaling]
    if len(rs) < 2:
      continue
    ms = np.array([r['m'] for r in rs], float)
    slope = lambda y: float(np.polyfit(np.log2(ms), np.log2(y), 1)[0])
    last = [r['checks'][-1] for r in rs]
    out[scaling] = {
        'drift_slope_log2': slope([c['drift'] for c in last]),
        'distance_slope_log2': slope([c['distance'] for c in last]),
        'row_move_slope_log2': slope([c['max_row_distance'] for c in last]),
        'by_m': {int(r['m']): dict(final_loss=r['loss'][-1],
                                   first_loss=r['loss'][0], **c)
                 for r, c in zip(rs, last)}}
  for r in rows:
    out.setdefault('error', {}).setdefault(
        f"{r['problem']}/{r['feature_map']}{r['num_features']}/"
        f"{r['estimator']}", {})[int(r['m'])] = r['error']
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', default='docs/figures')
  p.add_argument('--full', action='store_true')
  p.add_argument('--steps', type=int, default=200)
  args = p.parse_args(argv)
  import matplotlib
  matplotlib.use('Agg')  # files only
  conv = list(CONVERGENCE_LENGTHS) + ([131072] if args.full else [])
  approx = list(APPROXIMATION_LENGTHS) + ([262144] if args.full else [])
  os.makedirs(args.out, exist_ok=True)
  print('stylised setting: m =', conv, flush=True)
  results = (stylized.sweep(conv, stylized.Setting(scaling='ntk'), args.steps)
             + stylized.sweep(conv, stylized.Setting(scaling='softmax'),
                              args.steps))
  rows = []
  for problem in ('random', 'minilm'):
    print(f'approximation ({problem}): m =', approx, flush=True)
    rows += approximation.sweep(approx, problem)
  plt = _plt()
  for name, fig in (('ntk_convergence.png', convergence_figure(results)),
                    ('ntk_approximation.png', approximation_figure(rows))):
    fig.savefig(os.path.join(args.out, name), dpi=110)
    plt.close(fig)
  record = dict(command='python -m ntk_prefix.ntk.figures ' + ' '.join(
      sys.argv[1:] if argv is None else argv),
      date=datetime.date.today().isoformat(),
      summary=summary(results, rows), convergence=results, approximation=rows)
  with open(os.path.join(args.out, 'ntk_results.json'), 'w') as f:
    json.dump(record, f, indent=1)
  print(json.dumps(record['summary'], indent=1))
  print('wrote', args.out)


if __name__ == '__main__':
  main()
