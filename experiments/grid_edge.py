r"""Does a table's learning-rate grid reach far enough? For each method whose
chosen rate sits at an end of the grid the table searched, train seed 0 at
the next point further out in the config's four-point grid, at the table's
sizes, and compare the held-out score that made the choice.

  python -m experiments.grid_edge --table=nlu --task=sst2
  python -m experiments.grid_edge --table=lm --task=e2e_nlg

Reads the table's results.json and writes grid_edge_<task>.md beside it.
The runs take the table's sizes, with the --config overrides its recorded
command had. They go where the table's own runs go (--workdir), so a later
table run over the wider grid reuses them. Nothing is decoded: on the
generation tasks only the held-out loss is compared.
"""
import argparse
import json
import os
import shlex
import sys

from experiments import common, lm, nlu
from ntk_prefix import config as config_lib, provenance
from ntk_prefix.sweep import point_name, run_point

# table -> (config, default workdir, held-out metric, higher is better)
TABLES = {'nlu': (nlu.CONFIG, 'workdirs/experiments/nlu', 'eval_accuracy',
                  True),
          'lm': (lm.CONFIG, 'workdirs/experiments/lm', 'eval_loss', False)}
LR = 'optimizer.lr'


def further_out(searched: list, chosen: float, full_grid: list):
  """('top' | 'bottom' | 'inside', the next rate outward or None). The
  next rate is the nearest point of the full grid beyond the searched end
  the choice sits at; None when the full grid ends there too."""
  if len(searched) < 2 or min(searched) < chosen < max(searched):
    return 'inside', None
  if chosen == max(searched):
    beyond = [lr for lr in full_grid if lr > chosen]
    return 'top', min(beyond) if beyond else None
  beyond = [lr for lr in full_grid if lr < chosen]
  return 'bottom', max(beyond) if beyond else None


def check(table: str, task: str, results: dict, base: dict, workdir: str,
          log=print) -> list:
  """One row per method: its choice, and the held-out score one grid point
  further out where the choice sat at an end of the searched grid."""
  config_path, _, select, higher = TABLES[table]
  # The table's own --config overrides (its sizes), from its recorded command.
  base = {**common.config_overrides(
      [a for a in shlex.split(results['command']) if a.startswith('--config.')]),
      **base}
  module = config_lib.load_file(config_path)
  full_grid = module.get_search_space(task + ',full')
  spec = f'{config_path}:{task}'
  root = common.run_root(workdir, task, base)
  rows = []
  for record in results['tasks'][task]['records']:
    method = record['method']
    if LR not in record['chosen']:
      continue  # `none` on the LM tables: nothing trained, nothing chosen
    searched = [p['overrides'][LR] for p in record['search']]
    chosen = record['chosen'][LR]
    at = next(p for p in record['search'] if p['overrides'][LR] == chosen)
    side, lr = further_out(searched, chosen,
                           [p[LR] for p in full_grid[method]])
    row = {'method': method, 'searched': searched, 'chosen': chosen,
           'side': side, 'select': at['select'], 'scores': at['scores'],
           'further': lr}
    if lr is not None:
      point = {LR: lr}
      metrics = run_point(
          common.configured(spec, {**base, 'method.name': method, **point,
                                   'seed': 0}),
          os.path.join(root, method, point_name(point) + ',seed=0'))
      row['further_select'] = metrics[select]
      row['further_scores'] = {k: v for k, v in metrics.items()
                               if k.startswith('test_')}
      row['better'] = (metrics[select] > at['select'] if higher
                       else metrics[select] < at['select'])
      log(f'{method}: {select} {at["select"]:.4f} at lr={chosen}, '
          f'{metrics[select]:.4f} at lr={lr}')
    rows.append(row)
  return rows


def render(rows: list, table: str, task: str, stamp: dict) -> str:
  select = TABLES[table][2]
  higher = TABLES[table][3]
  edge = [r for r in rows if 'better' in r]
  lines = [
      f'## Beyond the learning-rate grid: {task}', '',
      f'Each method whose chosen rate sat at an end of the grid the table '
      f'searched, trained once more (seed 0, the table\'s sizes) at the next '
      f'rate further out in the config\'s grid. `{select}` is the held-out '
      f'score the table chooses by ({"higher" if higher else "lower"} is '
      f'better). {sum(r["better"] for r in edge)} of {len(edge)} do better '
      f'further out. `test_*` columns are the table\'s reported metric at '
      f'seed 0, shown, not used for any choice.', '',
      f'Command: `{stamp["command"]}`; commit {stamp["commit"]}; '
      f'{stamp["date"]}.', '']
  # The table's reported metric (dev set / test subset), where the table
  # scored it without decoding: seed 0 only, never used for a choice.
  test_keys = sorted({k for r in edge for k in r['further_scores']
                      if k in r['scores']})
  head = ['method', 'grid searched', 'chosen', f'{select} there',
          'one point further', f'{select} there', 'better further out']
  head += [f'{k} (seed 0): chosen → further' for k in test_keys]
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['method'], ' / '.join(f'{v:g}' for v in r['searched']),
             f'{r["chosen"]:g} ({r["side"]})', f'{r["select"]:.4f}']
    if 'better' in r:
      cells += [f'{r["further"]:g}', f'{r["further_select"]:.4f}',
                '**yes**' if r['better'] else 'no']
      cells += [f'{r["scores"].get(k, float("nan")):.4f} → '
                f'{r["further_scores"][k]:.4f}' for k in test_keys]
    else:
      why = ('chosen inside the grid' if r['side'] == 'inside'
             else "the config's grid ends here")
      cells += [why, '—', '—'] + ['—'] * len(test_keys)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--table', choices=sorted(TABLES), required=True)
  p.add_argument('--task', required=True)
  p.add_argument('--results', default='',
                 help='the table\'s results folder; default '
                      'experiments/results/<nlu or the task>')
  p.add_argument('--workdir', default='')
  args, base, command = common.parse(p, argv, 'experiments.grid_edge')
  folder = args.results or os.path.join(
      'experiments/results', 'nlu' if args.table == 'nlu' else args.task)
  path = os.path.join(folder, 'results.json')
  if not os.path.exists(path):
    raise SystemExit(f'--results={folder}: no results.json there; run the '
                     f'table\'s command first (experiments/README.md).')
  with open(path) as f:
    results = json.load(f)
  if args.task not in results['tasks']:
    raise SystemExit(f'--task={args.task}: {path} has tasks '
                     f'{sorted(results["tasks"])}.')
  rows = check(args.table, args.task, results, base,
               args.workdir or TABLES[args.table][1],
               log=lambda s: print(s, file=sys.stderr, flush=True))
  text = render(rows, args.table, args.task, provenance.stamp(
      command, exclude=('experiments/results',)))
  with open(os.path.join(folder, f'grid_edge_{args.task}.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
