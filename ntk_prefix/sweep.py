"""python -m ntk_prefix.sweep --config=configs/x.py --workdir=DIR

Runs every point of the config file's `get_sweep()` (a list of override
dicts) one after another, each in DIR/<point name>, and writes
DIR/results.csv and DIR/results.md. On a cluster, launch one
`python -m ntk_prefix.train` per point instead (`--point=N` runs only the
N-th) and rerun the sweep command to collect the table. Finished points are
not rerun.
"""
import csv
import json
import os

from absl import app, flags
from ml_collections import config_flags

from ntk_prefix import atomic, cli, config as config_lib, provenance
from ntk_prefix import workdir as workdir_lib


def point_name(overrides: dict) -> str:
  return ','.join(f'{k.split(".")[-1]}={v}' for k, v in overrides.items()) or 'base'


def points(spec: str) -> list:
  path = spec.partition(':')[0]
  module = config_lib.load_file(path)
  if not hasattr(module, 'get_sweep'):
    raise SystemExit(f'{path} has no get_sweep().')
  return module.get_sweep()


def run_point(config, workdir: str) -> dict:
  """Trains one run into workdir (resuming from its checkpoints) and returns
  its final metrics (with the wall time, device and commit of the training
  that finished it); a finished run is read, not rerun."""
  provenance.process_commit()  # asked before the code is imported
  from ntk_prefix import train
  final = os.path.join(workdir, 'final_metrics.json')
  check_same_config(config, workdir)
  if not os.path.exists(final):
    train.train_and_evaluate(config, workdir)
  with open(final) as f:
    metrics = json.load(f)
  # Runs finished before train wrote these itself, and killed before the
  # sweep added them: the training's time and code were not recorded.
  metrics.setdefault('wall_seconds', None)
  return metrics


def check_same_config(config, workdir: str) -> None:
  """A folder holds one run: reusing it for another config is an error
  (stricter than a resume: a sweep point's total_steps is part of it)."""
  recorded = workdir_lib.recorded_config(workdir)
  if recorded is None:
    return
  differ = workdir_lib.differing_keys(recorded, config, ('progress',))
  if differ:
    raise ValueError(
        f'{workdir} holds a run of another config (differs in '
        f'{list(differ)[:5]}). Use another --workdir, or delete the folder to '
        'rerun it.')


def search_space(lr_grid: dict, full: bool) -> dict:
  """method -> [{'optimizer.lr': lr}, ...]: the whole grid with full, else
  its middle two points (the grids are written four points each)."""
  return {m: [{'optimizer.lr': lr} for lr in (grid if full else grid[1:3])]
          for m, grid in lr_grid.items()}


def run(spec: str, workdir: str, overrides: list, only: int = -1) -> list:
  rows = []
  for i, point in enumerate(points(spec)):
    name = point_name(point)
    out = os.path.join(workdir, name)
    final = os.path.join(out, 'final_metrics.json')
    if (only < 0 or only == i) and not os.path.exists(final):
      config = config_lib.get_config(spec)
      for key, value in list(overrides) + list(point.items()):
        config_lib.override(config, key, value)
      run_point(config, out)
    if os.path.exists(final):
      with open(final) as f:
        rows.append({'point': name, **point, **json.load(f)})
  write_table(rows, workdir)
  return rows


def write_table(rows: list, workdir: str) -> None:
  if not rows:
    return
  keys = list(dict.fromkeys(k for r in rows for k in r))
  os.makedirs(workdir, exist_ok=True)
  with atomic.open_for_write(os.path.join(workdir, 'results.csv')) as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  lines += ['| ' + ' | '.join(fmt(r.get(k, '')) for k in keys) + ' |'
            for r in rows]
  atomic.write_text(os.path.join(workdir, 'results.md'),
                    '\n'.join(lines) + '\n')


POINT = flags.DEFINE_integer('point', -1, 'Run only the N-th point (one '
                             'job per point on a cluster); -1: all.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unknown arguments: {argv[1:]}')
  cli.config()  # --config and --workdir given, the base config valid
  flag = flags.FLAGS['config']
  spec = config_flags.get_config_filename(flag)
  overrides = list(config_flags.get_override_values(flag).items())
  workdir = cli.WORKDIR.value
  rows = run(spec, workdir, overrides, POINT.value)
  print(open(os.path.join(workdir, 'results.md')).read() if rows else
        'no finished points')


if __name__ == '__main__':
  cli.run(main)
