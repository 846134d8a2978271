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
import json
import os
import shlex
import sys

from absl import flags as absl_flags

from experiments import common, flags, lm, nlu, render as table_render
from ntk_prefix import config as config_lib, provenance

# table -> (the table's module: its CONFIG, WORKDIR and results_folder;
# higher is better for the held-out metric it chooses by, which its records
# name)
TABLES = {'nlu': (nlu, True), 'lm': (lm, False)}
LR = 'optimizer.lr'
TABLE = absl_flags.DEFINE_enum(
    'table', None, sorted(TABLES), 'Which table (experiments.grid_edge).')
RESULTS = absl_flags.DEFINE_string(
    'results', None, "The table's results folder (experiments.grid_edge; "
    'default experiments/results/<nlu or the task>).')


def further_out(record: dict, full_grid: list) -> tuple:
  """('top' | 'bottom' | 'inside', the next rate outward or None): the
  nearest rate of the full grid beyond the end of the searched grid that
  the record's choice sits at; None when the full grid ends there too."""
  side = table_render.edge_side(record, LR)
  if not side:
    return 'inside', None
  chosen = record['chosen'][LR]
  if side == 'top':
    beyond = [lr for lr in full_grid if lr > chosen]
    return side, min(beyond) if beyond else None
  beyond = [lr for lr in full_grid if lr < chosen]
  return side, max(beyond) if beyond else None


def check(table: str, task: str, results: dict, base: dict, workdir: str,
          log=print) -> list:
  """One row per method: its choice, and the held-out score one grid point
  further out where the choice sat at an end of the searched grid."""
  module, higher = TABLES[table]
  # The table's own --config overrides (its sizes), from its recorded command.
  base = {**common.config_overrides(
      [a for a in shlex.split(results['command']) if a.startswith('--config.')]),
      **base}
  full_grid = config_lib.load_file(module.CONFIG).get_search_space(
      task + ',full')
  spec = f'{module.CONFIG}:{task}'
  root = common.run_root(workdir, task, base)
  rows = []
  for record in results['tasks'][task]['records']:
    method, select = record['method'], record['select_metric']
    if LR not in record['chosen']:
      continue  # `none` on the LM tables: nothing trained, nothing chosen
    if 'edge' in record:
      continue  # the extending search already looked beyond its ends
    chosen = record['chosen'][LR]
    at = next(p for p in record['search'] if p['overrides'][LR] == chosen)
    side, lr = further_out(record, [p[LR] for p in full_grid[method]])
    row = {'method': method, 'select_metric': select, 'higher': higher,
           'searched': [p['overrides'][LR] for p in record['search']],
           'chosen': chosen, 'side': side, 'select': at['select'],
           'scores': at['scores'], 'further': lr}
    if lr is not None:
      _, metrics = common.run_seed(spec, root, method, {LR: lr}, 0, base)
      row['further_select'] = metrics[select]
      row['further_scores'] = {k: v for k, v in metrics.items()
                               if k.startswith('test_')}
      row['better'] = (metrics[select] > at['select'] if higher
                       else metrics[select] < at['select'])
      log(f'{method}: {select} {at["select"]:.4f} at lr={chosen}, '
          f'{metrics[select]:.4f} at lr={lr}')
    rows.append(row)
  return rows


def render(rows: list, task: str, stamp: dict) -> str:
  select, higher = rows[0]['select_metric'], rows[0]['higher']
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
  test_keys = sorted(k for k in edge[0]['further_scores']
                     if k in edge[0]['scores']) if edge else []
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
      cells += [f'{r["scores"][k]:.4f} → '
                f'{r["further_scores"][k]:.4f}' for k in test_keys]
    else:
      why = ('chosen inside the grid' if r['side'] == 'inside'
             else "the config's grid ends here")
      cells += [why, '—', '—'] + ['—'] * len(test_keys)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if TABLE.value is None or flags.TASK.value is None:
    raise SystemExit('experiments.grid_edge needs --table=nlu|lm and '
                     '--task=TASK.')
  module, task = TABLES[TABLE.value][0], flags.TASK.value
  args = flags.parsed(argv, 'experiments.grid_edge', module.CONFIG,
                      module.WORKDIR, unused=('methods', 'seeds', 'full',
                                              'out', 'tasks'))
  folder = RESULTS.value or module.results_folder(task)
  path = os.path.join(folder, 'results.json')
  if not os.path.exists(path):
    raise SystemExit(f'--results={folder}: no results.json there; run the '
                     f'table\'s command first (experiments/README.md).')
  with open(path) as f:
    results = json.load(f)
  if task not in results['tasks']:
    raise SystemExit(f'--task={task}: {path} has tasks '
                     f'{sorted(results["tasks"])}.')
  rows = check(TABLE.value, task, results, args.base, args.workdir,
               log=lambda s: print(s, file=sys.stderr, flush=True))
  if not rows:
    raise SystemExit(f'--task={task}: no method of {path} chose a '
                     'learning rate; nothing to look beyond.')
  text = render(rows, task, provenance.stamp(
      args.command, exclude=('experiments/results',)))
  with open(os.path.join(folder, f'grid_edge_{task}.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  flags.run(main, 'configs/nlu.py (configs/lm.py for --table=lm)')
