r"""How NTK-Attention's initial state starts and trains: the evidence for
its default.

  python -m experiments.ntk_init --task=e2e_nlg   # or --task=sst2

For each init (ours and the official runs' presets) the held-out loss
before the first step and after training at the table's budget (its
configs/ sizes), on the rows that choose the learning rate; no decoding.
Each init's rates are searched as the tables search theirs, with seed 0:
--lrs, extended outward while the best held-out loss sits at an end
(experiments.search), so each init is compared at its own best rate,
which then trains at seeds 1..--seeds-1 too (the tables' seeds).
Writes experiments/results/<table>/ntk_init_<task>.md. Runs resume.
"""
import os
import sys
from typing import Optional

import numpy as np
from absl import flags as absl_flags

from experiments import common, flags, held_out, init_loss, lm, nlu, search
from experiments import render as render_lib
from experiments import ledger as ledger_lib
from ntk_prefix import atomic, config as config_lib, provenance

# label -> (method label, options): the inits compared.
INITS = {
    'zeros': ('ntk_attention', {'method.ntk_attention.init': 'zeros'}),
    'normal 0.01': ('ntk_attention', {'method.ntk_attention.init': 'normal',
                                      'method.ntk_attention.init_std': 0.01}),
    'official_glm': ('ntk_attention:official_glm', {}),
    'official_vit': ('ntk_attention:official_vit', {}),
}
WORKDIR = 'workdirs/experiments/ntk_init'
LRS = absl_flags.DEFINE_list(
    'lrs', ['0.003', '0.01'], 'Learning rates each init trains at first; '
    'extended outward while its best sits at an end (experiments.ntk_init).')


def measure(task: str, lrs: list, base: dict, workdir: str,
            seeds: int = 1, ledger: Optional[str] = None) -> dict:
  table = init_loss.table_for(task)
  spec = f'{table.CONFIG}:{task}'
  config = common.configured(spec, base)
  rows, commits = {}, set()
  start = initial_losses(config, INITS)
  root = common.run_root(workdir, task, base)
  for label, (method, options) in INITS.items():
    trained = {}

    def evaluate(point, method=method, options=options, trained=trained):
      _, metrics = common.run_seed(spec, root, method, {**options, **point},
                                   0, base, ledger)
      commits.add(metrics.get('commit', ''))
      lr = point[search.SEARCH_KEY]
      trained[lr] = {k: metrics[k] for k in metrics
                     if k.startswith(('eval_', 'test_'))}
      print(f'{label} lr={lr}: {trained[lr]}', file=sys.stderr, flush=True)
      return metrics['eval_loss']

    points, values, edge = search.search_outward(
        [{search.SEARCH_KEY: lr} for lr in lrs], evaluate,
        higher_is_better=False)
    best = points[values.index(min(values))][search.SEARCH_KEY]
    at_best = [min(values)]  # seed 0's is the search's
    for seed in range(1, seeds):
      metrics = common.run_seed(spec, root, method,
                                {**options, search.SEARCH_KEY: best}, seed,
                                base, ledger)[1]
      at_best.append(metrics['eval_loss'])
      commits.add(metrics.get('commit', ''))
    rows[label] = {'init_loss': start[label], 'trained': trained,
                   'best_lr': best, 'edge': edge, 'seeds': at_best}
  return {'task': task, 'rows': rows, 'frozen': start['frozen'],
          'eval_split': config.task.eval_split, 'steps': config.total_steps,
          'batch': config.batch_size, 'commits': sorted(commits - {''})}


def initial_losses(config, inits: dict) -> dict:
  """Held-out loss at step 0 per init (seed 0), and of the frozen model."""
  out = {}
  for label, (method, options) in inits.items():
    c = config.copy_and_resolve_references()
    for k, v in options.items():
      config_lib.override(c, k, v)
    out[label] = held_out.initial_losses(c, [method], 1)[method][0]
  out['frozen'] = held_out.initial_losses(config, ['none'], 1)['none'][0]
  return out


def render(result: dict, stamp: dict) -> str:
  rows = result['rows']
  lrs = sorted({lr for row in rows.values() for lr in row['trained']})
  first_row = next(iter(rows.values()))
  first = next(iter(first_row['trained'].values()))
  metrics = [k for k in ('eval_loss', 'test_accuracy') if k in first]
  lines = [f"## NTK-Attention's initial state: {result['task']}", '',
           f"Held-out loss on `{result['eval_split']}` before the first "
           f"step (the frozen model: {result['frozen']:.3f}) and after "
           f"{result['steps']} steps of batch {result['batch']} (seed 0) "
           "at each learning rate searched for that init (the tables' "
           'rule: the grid, extended outward while the best held-out loss '
           'sits at an end; — not run). `best` is the lowest held-out '
           'loss, (edge) if still at an end of what was searched; `at best '
           "lr, seeds` is that rate's held-out loss over seeds 0.."
           f"{len(first_row['seeds']) - 1}, mean ± std (per seed)" + (
               '; test_accuracy is the dev set, scored once.' if
               'test_accuracy' in metrics else '.'), '',
           f"Command: `{stamp['command']}`; commit {stamp['commit']}; "
           f"{stamp['date']}." + render_lib.run_commits(
               {'tasks': {'': {'records': [result]}}}), '']
  head = ['init', 'loss at step 0', 'minus frozen', 'best',
          'at best lr, seeds'] + [
      f'{m} (lr={lr:g})' for lr in lrs for m in metrics]
  lines += ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (
      len(head) - 1)]
  for label, row in rows.items():
    trained = row['trained']
    best = trained[row['best_lr']]['eval_loss']
    cells = [label, f"{row['init_loss']:.3f}",
             f"{row['init_loss'] - result['frozen']:+.3f}",
             f"{best:.3f} (lr={row['best_lr']:g}"
             + (' (edge))' if row['edge'] else ')'),
             f"{np.mean(row['seeds']):.3f} ± {np.std(row['seeds']):.3f} ("
             + ' / '.join(f'{v:.3f}' for v in row['seeds']) + ')']
    for lr in lrs:
      for m in metrics:
        v = trained.get(lr, {}).get(m)
        cells.append('—' if v is None else f'{100 * v:.1f}'
                     if m.endswith('accuracy') else f'{v:.3f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  task = flags.TASK.value or 'e2e_nlg'
  table = init_loss.table_for(task)
  args = flags.parsed(argv, 'experiments.ntk_init', table.CONFIG, WORKDIR,
                      unused=('methods', 'full', 'tasks'))
  folder = (nlu.results_folder() if table is nlu
            else lm.results_folder(task))
  out = args.out or os.path.join(folder, f'ntk_init_{task}.md')
  result = measure(task, [float(x) for x in LRS.value], args.base,
                   args.workdir, args.seeds, ledger_lib.path_for(out))
  text = render(result, provenance.stamp(args.command,
                                         exclude=('experiments/results',)))
  atomic.write_text(out, text)
  print(text)


if __name__ == '__main__':
  flags.run(main, 'configs/lm.py (configs/nlu.py for an NLU --task)')
