r"""The NTK-Attention paper's claim on real data: score and cost against the
prefix length m, with NTK-Attention as the m -> infinity point.

  python -m experiments.prefix_length --task=sst2      # MiniLM, dev accuracy
  python -m experiments.prefix_length --task=e2e_nlg   # SmolLM2, BLEU
      [--lengths=1,4,16,64,256,1024] [--seeds=3] [--methods=NAME,...] \
      [--config=configs/nlu.py --config.KEY=VALUE ...]  # lm.py for e2e_nlg

Every explicit-prefix method (methods.PREFIX_METHODS: P-Tuning v2,
Prefix-Tuning) at every m; as reference lines the m = infinity method
(NTK-Attention), the weight-space methods (LoRA, full fine-tuning) and the
frozen model (--methods keeps some of these rows, in this order): each
row searched and repeated exactly as the main tables do (configs/nlu.py or
configs/lm.py sizes, the extending learning-rate search, seeds). Each
configuration's train-step time and XLA peak memory are measured on one
training batch. The compressed points: each prefix
method's runs at the largest m, fitted into NTK-Attention state by
`ntk_prefix.compress`, scored like the others. Runs resume; results go to
experiments/results/prefix_length_<task>/ (results.json, table.md and
prefix_length.png). The default --workdir is the main table's
(workdirs/experiments/nlu or .../lm): the reference rows are then the very
runs of that table, read rather than rerun, and the two tables agree.
"""
import json
import os
import sys
from typing import Optional

import numpy as np
from absl import flags as absl_flags

from experiments import common, flags, init_loss, lm, nlu, search
from experiments import ledger as ledger_lib
from experiments import prefix_length_report
from experiments.prefix_length_report import PREFIX_METHODS, REFERENCES
from ntk_prefix import atomic, config as config_lib, methods, provenance
from ntk_prefix import workdir as workdir_lib

LENGTHS = absl_flags.DEFINE_list(
    'lengths', ['1', '4', '16', '64', '256', '1024'],
    'Prefix lengths m of the explicit-prefix rows (experiments.prefix_length).')
COMPRESS_STEPS = absl_flags.DEFINE_integer(
    'compress_steps', 300, 'Steps fitting each largest-m prefix into '
    'NTK-Attention state (experiments.prefix_length).')
MAX_EXTRA = absl_flags.DEFINE_integer(
    'max_extra', search.MAX_EXTRA_POINTS, 'Learning rates the search may add '
    'beyond its grid (experiments.prefix_length).', lower_bound=0)


def results_folder(task: str) -> str:
  return f'experiments/results/prefix_length_{task}'


class Task:
  """What differs between the classification and the generation table."""

  def __init__(self, name: str, base: dict):
    self.name = name
    self.lm = name not in config_lib.load_file(nlu.CONFIG).TASKS
    self.table = lm if self.lm else nlu
    self.module = config_lib.load_file(self.table.CONFIG)
    self.spec = f'{self.table.CONFIG}:{name}'
    self.base = base
    self.metric = 'bleu' if self.lm else 'test_accuracy'
    self.select = 'eval_loss' if self.lm else 'eval_accuracy'
    self.higher = not self.lm

  def grid(self, method: str) -> list:
    return common.grid_for(self.module.get_search_space(self.name), method)

  def score(self, workdir: str, metrics: dict) -> dict:
    if self.lm:
      return lm.scores_only(lm.decode_and_score(
          common.configured(self.spec, self.base), workdir))
    return {'test_accuracy': metrics['test_accuracy']}


def step_cost(task: Task, overrides: dict) -> dict:
  """Train-step seconds and peak bytes of one configuration, fresh state."""
  from ntk_prefix import step_cost as step_cost_lib
  from ntk_prefix.build import build, init_trainable
  from ntk_prefix.data import batches
  c = common.configured(task.spec, {**task.base, **overrides})
  s = build(c)
  seconds, peak = step_cost_lib.step_cost(s, init_trainable(s),
                                          batches.train_batch(
                                              s.train_ds, 0, c.batch_size,
                                              c.seed))
  return {'step_seconds': seconds, 'peak_bytes': peak}


def prefix_overrides(method: str, m: int) -> dict:
  """Config overrides giving `method` a prefix of m rows, the input's
  positions unshifted at every m (so m = 1,024 fits MiniLM's 512)."""
  return {f'method.{method}.{k}': v
          for k, v in methods.prefix_length_options(method, m).items()}


def row(task: Task, method: str, m, root: str, seeds: int, max_extra: int,
        log, ledger: str) -> dict:
  overrides = {} if m is None else prefix_overrides(method, m)
  base = {**task.base, **overrides}
  unadapted = method in methods.UNADAPTED  # the frozen model: no step cost
  if unadapted and task.lm:
    record = lm.before_adaptation(task.spec, root, base, ledger)
  else:
    record = common.tune_and_repeat(
        task.spec, method, task.grid(method), seeds, root,
        select=task.select, higher_is_better=task.higher, score=task.score,
        base=base, log=log, max_extra=max_extra, ledger=ledger,
        score_reads_checkpoint=task.lm)
  record.update(prefix_length=m, cost=None if unadapted else step_cost(
      task, {'method.name': method, **overrides}))
  return record


def compressed(task: Task, method: str, record: dict, root: str, steps: int,
               log, ledger: Optional[str] = None) -> dict:
  """The runs of `record` (every seed of `method`) compressed into the
  state of compress.TARGET, scored as the table scores runs; each result is
  kept in the ledger, so a fresh clone neither compresses nor retrains."""
  from ntk_prefix import compress
  base = {**task.base, **prefix_overrides(method, record['prefix_length'])}
  runs = []
  for run in record['runs']:
    config = common.configured(task.spec, {
        **base, **common.method_overrides(method), **record['chosen'],
        'seed': run['seed']})
    key = common.run_key(root, common.run_dir(
        root, method, record['chosen'], run['seed'])) + '-compressed'
    kept = ledger_lib.find(ledger, key, config, kind='compressed')
    if kept and kept['metrics']['steps'] == steps:
      summary, scores = kept['metrics'], kept['scores']
    else:  # compressing reads the run's checkpoint: no ledger for the run
      workdir, _ = common.run_seed(task.spec, root, method,
                                   record['chosen'], run['seed'], base)
      out = workdir + '-compressed'
      report_path = os.path.join(out, compress.REPORT)
      if os.path.exists(report_path):
        with open(report_path) as f:
          report = json.load(f)
      else:
        report = compress.compress(config, os.path.join(workdir, 'final'),
                                   out, steps=steps, log=log)
      scores = (task.score(out, {}) if task.lm else
                {'test_accuracy': report['after']['test_accuracy']})
      summary = {'steps': steps, 'commit': provenance.process_commit(),
                 **{f'{k}_error': float(np.mean([l[k] for l in
                                                 report['layers']]))
                    for k in ('fitted', 'closed_form')}}
      ledger_lib.add(ledger, key, workdir_lib.recorded_config(workdir),
                     summary, scores, kind='compressed')
    runs.append({'seed': run['seed'], 'scores': scores,
                 'fitted_error': summary['fitted_error'],
                 'closed_form_error': summary['closed_form_error']})
    log(f'  compressed seed {run["seed"]}: {scores}')
  return {'method': f'{method} compressed', 'source': method,
          'into': compress.TARGET, 'prefix_length': record['prefix_length'],
          'runs': runs}


def main(argv):
  name = flags.TASK.value or 'sst2'
  table = init_loss.table_for(name)
  args = flags.parsed(argv, 'experiments.prefix_length', table.CONFIG,
                      table.WORKDIR, methods=PREFIX_METHODS + REFERENCES,
                      unused=('full', 'tasks'))
  for method in args.methods:
    flags.one_of('methods', method, PREFIX_METHODS + REFERENCES)
  base = args.base
  task = Task(name, base)
  out = args.out or results_folder(name)
  lengths = [int(x) for x in LENGTHS.value]
  log = lambda s: print(s, file=sys.stderr, flush=True)
  c = common.configured(task.spec, base)
  results = {
      'title': f'Score and cost against prefix length: {name}',
      'task': name, 'metric': task.metric,
      'metric_label': 'BLEU' if task.lm else 'dev accuracy (%)',
      'scale': 100.0, 'seeds': args.seeds, 'records': [],
      'caption': (
          f'{c.total_steps} steps × batch {c.batch_size} per run (the main '
          f'table\'s size); learning rate searched per row on '
          f'`{c.task.eval_split}` as the main tables do, then '
          f'{args.seeds} seeds. The explicit prefixes leave the input\'s '
          f'positions where they are at every m (shift_positions=False). '
          f'Train step and peak memory (XLA\'s account) '
          f'of each configuration on one batch of this machine '
          f'({provenance.device()}).' + common.precision_note(c))}
  largest = {}  # method -> (its record at the largest m, its run root)
  for method in [m for m in args.methods if m in PREFIX_METHODS]:
    for m in lengths:
      root = common.run_root(args.workdir, f'{name}-m{m}', base)
      log(f'== {method} m={m}')
      record = row(task, method, m, root, args.seeds, MAX_EXTRA.value, log,
                   ledger_lib.path_for(out))
      results['records'].append(record)
      if m == max(lengths):
        largest[method] = (record, root)
      write(out, results, args.command, figure=False)
  for method in [m for m in args.methods if m in REFERENCES]:
    log(f'== {method}')
    root = common.run_root(args.workdir, name, base)
    results['records'].append(row(task, method, None, root, args.seeds,
                                  MAX_EXTRA.value, log,
                                  ledger_lib.path_for(out)))
    write(out, results, args.command, figure=False)
  results['compressed'] = []
  for method, (record, root) in largest.items():
    log(f'== {method} at the largest m, compressed')
    results['compressed'].append(compressed(
        task, method, record, root, COMPRESS_STEPS.value, log,
        ledger_lib.path_for(out)))
  print(write(out, results, args.command))


def write(out: str, results: dict, command: str, figure: bool = True) -> str:
  """results.json and the table after every row (a stopped run keeps them);
  the figure once, at the end (matplotlib takes a second or more a draw)."""
  results = {**provenance.stamp(command, exclude=('experiments/results',)),
             **results}
  os.makedirs(out, exist_ok=True)
  atomic.write_json(os.path.join(out, 'results.json'), results)
  return prefix_length_report.write(out, results, figure)


if __name__ == '__main__':
  flags.run(main, 'configs/nlu.py (configs/lm.py for a generation --task)')
