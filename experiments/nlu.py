r"""The NLU table: every method on SST-2, RTE and CB with the pretrained
all-MiniLM-L6-v2, learning rate searched per method, mean ± std over seeds.

  python -m experiments.nlu [--tasks=sst2,rte,cb] [--methods=...] \
      [--seeds=3] [--full] [--out=experiments/results/nlu] \
      [--config=configs/nlu.py --config.KEY=VALUE ...]  # every run's config

Runs live in --workdir (resumable; finished runs are read, not rerun);
results.json, table.md and metric_vs_params.png go to --out. Sizes and the
search space are in configs/nlu.py.
"""
from experiments import common, flags, papers, search
from ntk_prefix import config as config_lib

CONFIG = 'configs/nlu.py'
WORKDIR = 'workdirs/experiments/nlu'
TASK_NAMES = {'sst2': 'SST-2 (GLUE dev, 872)', 'rte': 'RTE (GLUE dev, 277)',
              'cb': 'CB (SuperGLUE val, 56)', 'boolq': 'BoolQ (SuperGLUE val)'}


def results_folder(task: str = '') -> str:
  """Where the table writes by default: one folder for all NLU tasks (the
  argument keeps the signature of lm.results_folder)."""
  return 'experiments/results/nlu'


def main(argv):
  module = config_lib.load_file(CONFIG)
  args = flags.parsed(argv, 'experiments.nlu', CONFIG, WORKDIR,
                      methods=module.METHODS, unused=('task',))
  base = args.base
  out = args.out or results_folder()
  tasks = flags.TASKS.value or ['sst2', 'rte', 'cb']
  methods = args.methods
  size = ',full' if args.full else ''
  results = {
      'title': 'Natural language understanding: all-MiniLM-L6-v2 (22.7M, '
               'frozen)',
      'metric': 'test_accuracy', 'metric_label': 'dev accuracy (%)',
      'scale': 100.0, 'select_label': 'held-out accuracy by lr',
      'seeds': args.seeds, 'task_names': TASK_NAMES,
      'papers': papers.reported(TASK_NAMES)}  # BoolQ's too
  sizes = []
  for task in tasks:
    c = common.configured(f'{CONFIG}:{task}{size}', base)
    sizes.append(f'{task}: {c.total_steps} steps × batch {c.batch_size} '
                 f'on `{c.task.train_split}`, lr chosen on '
                 f'`{c.task.eval_split}`, max {c.task.max_length} tokens')
  results['caption'] = (
      ('Full size' if args.full else 'This machine\'s size (2 CPU cores)') +
      ': ' + '; '.join(sizes) + '. Every method: the same steps, a '
      f"{len(module.get_search_space(tasks[0] + size)['none'])}-point "
      'learning-rate grid with seed 0 (configs/nlu.py), '
      f'{search.SEARCH_RULE}, then the chosen '
      f'rate at seeds 1..{args.seeds - 1}. The reported dev set is never '
      'used for a choice. `none` trains the classifier head alone.')
  print(common.classification_tables(
      CONFIG, module, tasks, methods, args.seeds, size, base, args.workdir,
      out, args.command, results))


if __name__ == '__main__':
  flags.run(main, CONFIG)
