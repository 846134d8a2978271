"""What every table shares: resumable runs, a learning-rate search with the
same budget per method, seeds, and a results folder stamped with the
command, commit and date."""
import hashlib
import json
import os
import sys
from typing import Callable, Optional

import numpy as np

from experiments import ledger as ledger_lib, render
from experiments.search import MAX_EXTRA_POINTS, search_outward
from ntk_prefix import atomic, config as config_lib, provenance
from ntk_prefix import workdir as workdir_lib
from ntk_prefix.sweep import point_name, run_point


def use_compilation_cache(path: str = '~/.cache/ntk_prefix/jax') -> None:
  """Seeds of one point compile the same programs: compile them once. A
  cache already configured (JAX_COMPILATION_CACHE_DIR, as the tests set) is
  kept."""
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def configured(spec: str, overrides: dict):
  config = config_lib.get_config(spec)
  for key, value in overrides.items():
    config_lib.override(config, key, value)
  return config


def run_root(workdir: str, name: str, base: dict) -> str:
  """Runs of different --config overrides never share a folder."""
  if base:  # '1000' from a recorded command and 1000 from a flag: one folder
    digest = hashlib.sha1(json.dumps({k: str(v) for k, v in base.items()},
                                     sort_keys=True).encode())
    name += '-' + digest.hexdigest()[:8]
  return os.path.join(workdir, name)


def method_overrides(label: str) -> dict:
  """A table row's method: 'NAME', or 'NAME:PRESET' for a preset."""
  name, _, preset = label.partition(':')
  return {'method.name': name, 'method.preset': preset}


def grid_for(space: dict, label: str) -> list:
  """A row's learning-rate grid: its method's, preset or not."""
  return space[label.partition(':')[0]]


def run_seed(spec: str, root: str, method: str, point: dict, seed: int,
             base: dict, ledger: Optional[str] = None) -> tuple:
  """(workdir, final metrics) of one run of a table, `method` ('NAME' or
  'NAME:PRESET') at `point` and `seed`. A finished run is read, not rerun:
  from its folder, else from the `ledger` (experiments.ledger)."""
  workdir = run_dir(root, method, point, seed)
  overrides = {**base, **method_overrides(method), **point, 'seed': seed}
  config = configured(spec, overrides)
  run = run_key(root, workdir)
  kept = ledger_lib.find(ledger, run, config)
  if kept and not os.path.exists(os.path.join(workdir, 'final_metrics.json')):
    ledger_lib.add(ledger, run, kept['config'], kept['metrics'],
                   kept.get('scores'))  # another table's run: now ours too
    return workdir, kept['metrics']
  metrics = run_point(config, workdir)
  ledger_lib.add(ledger, run, workdir_lib.recorded_config(workdir), metrics)
  return workdir, metrics


def run_dir(root: str, method: str, point: dict, seed: int) -> str:
  return os.path.join(root, method.replace(':', '-'),
                      point_name(point) + f',seed={seed}')


def run_key(root: str, workdir: str) -> str:
  """A run's name in a ledger: its folder below the command's --workdir."""
  return os.path.relpath(workdir, os.path.dirname(os.path.normpath(root)))


def precision_note(c) -> str:
  """The runs' compute precision, for a caption ('' in float32)."""
  if c.model.dtype == 'float32':
    return ''
  return (f' Frozen weights in {c.model.dtype}, every matmul accumulated in '
          'float32; method state, optimizer and softmax statistics float32.')


def tune_and_repeat(spec: str, method: str, grid: list, seeds: int,
                    root: str, *, select: str, higher_is_better: bool,
                    score: Callable[[str, dict], dict],
                    base: Optional[dict] = None,
                    log: Callable = print,
                    max_extra: int = MAX_EXTRA_POINTS,
                    ledger: Optional[str] = None,
                    score_reads_checkpoint: bool = False) -> dict:
  """Seed 0 at every grid point, extended outward while the best sits at an
  end (search.search_outward); choose on `select` (held-out rows), then
  the chosen point at seeds 1.. . `score(workdir, metrics)` returns the
  reported metrics of one finished run (e.g. dev accuracy, BLEU; pass
  `score_reads_checkpoint` where it decodes the run's checkpoint): it is
  called for the chosen point's runs only, so a generation table decodes 3
  runs a row, not every point searched, and no reported score of a point
  that was not chosen exists to be looked at. `base` overrides apply to
  every run; finished runs and their scores are kept in `ledger`
  (experiments.ledger).
  """
  search, finished = [], []
  base = base or {}

  def scored(workdir, metrics, point, seed):
    """(scores, metrics) of a finished run."""
    run = run_key(root, workdir)
    checkpoint = os.path.join(workdir, 'final')
    if (score_reads_checkpoint and not os.path.exists(checkpoint)
        and ledger_lib.kept_scores(ledger, run, metrics) is None):
      # In the ledger, stopped before it was scored, its folder on another
      # machine: trained again (from a commit, so reproducibly) to be scored.
      log(f'  {method} {point_name(point)},seed={seed}: kept without '
          'scores and its checkpoint is not here; training it again')
      _, metrics = run_seed(spec, root, method, point, seed, base)
      ledger_lib.add(ledger, run, workdir_lib.recorded_config(workdir),
                     metrics)
    return ledger_lib.scores(ledger, run, metrics,
                             lambda: score(workdir, metrics)), metrics

  def evaluate(point):
    workdir, metrics = run_seed(spec, root, method, point, 0, base, ledger)
    finished.append((workdir, metrics))
    search.append({'overrides': point, 'select': metrics[select],
                   'wall_seconds': metrics['wall_seconds'],
                   'device': metrics.get('device', ''),
                   'commit': metrics.get('commit', ''),
                   'trainable_params': metrics['trainable_params']})
    wall = metrics['wall_seconds']
    log(f'  {method} {point_name(point)}: {select}={metrics[select]:.4f} '
        f'({"?" if wall is None else f"{wall:.0f}"} s)')
    return metrics[select]

  _, values, edge = search_outward(grid, evaluate,
                                   higher_is_better=higher_is_better,
                                   max_extra=max_extra)
  best = int(np.argmax(values) if higher_is_better else np.argmin(values))
  chosen = search[best]
  chosen['scores'], metrics = scored(*finished[best], chosen['overrides'], 0)
  chosen['select'] = metrics[select]
  log(f'  {method} seed 0: {_fmt(chosen["scores"])}')
  runs = [{'seed': 0, 'scores': chosen['scores'], 'select': chosen['select'],
           'wall_seconds': chosen['wall_seconds'],
           'device': chosen['device']}]
  for seed in range(1, seeds):
    workdir, metrics = run_seed(spec, root, method, chosen['overrides'],
                                seed, base, ledger)
    seed_scores, metrics = scored(workdir, metrics, chosen['overrides'],
                                  seed)
    runs.append({'seed': seed, 'scores': seed_scores,
                 'select': metrics[select],
                 'wall_seconds': metrics['wall_seconds'],
                 'device': metrics.get('device', ''),
                 'commit': metrics.get('commit', '')})
    log(f'  {method} seed {seed}: {_fmt(runs[-1]["scores"])}')
  return {'method': method, 'trainable_params': chosen['trainable_params'],
          'chosen': chosen['overrides'], 'select_metric': select,
          'search': search, 'runs': runs, 'edge': edge,
          'runs_spent': len(search) + seeds - 1,
          'commits': sorted({r['commit'] for r in search + runs
                             if r.get('commit')})}


def _fmt(scores: dict) -> str:
  return ' '.join(f'{k}={v:.4f}' for k, v in scores.items())


def write_results(out: str, results: dict, command: str) -> str:
  """results.json plus the rendered table.md and plot (see redraw)."""
  os.makedirs(out, exist_ok=True)
  results = {**provenance.stamp(command, exclude=('experiments/results',)),
             **results}
  atomic.write_json(os.path.join(out, 'results.json'), results)
  return render.render(out)


def majority_rate(config) -> float:
  """The share of the reported split's most common label: what always
  answering that label scores, the floor a classification table is read
  against."""
  from ntk_prefix import build
  t = config.task
  counts = np.bincount(build.split_labels(t, t.test_split, t.test_limit))
  return float(counts.max() / counts.sum())


def classification_tables(config_path: str, module, tasks: list,
                          methods: list, seeds: int, size: str, base: dict,
                          workdir: str, out: str, command: str,
                          results: dict) -> str:
  """For each task and method: search, seeds, then the table so far. The
  reported metric is the run's test split, scored once at the end."""
  results['tasks'] = {t: {'records': []} for t in tasks}
  for task in tasks:
    print(f'== {task}', file=sys.stderr)
    space = module.get_search_space(task + size)
    results['tasks'][task]['majority'] = majority_rate(
        configured(f'{config_path}:{task}{size}', base))
    for method in methods:
      record = tune_and_repeat(
          f'{config_path}:{task}{size}', method, grid_for(space, method),
          seeds, run_root(workdir, task.replace(':', '_') +
                          size.replace(',', '_'), base),
          select='eval_accuracy', higher_is_better=True, base=base,
          score=lambda workdir, m: {'test_accuracy': m['test_accuracy']},
          log=lambda s: print(s, file=sys.stderr, flush=True),
          ledger=ledger_lib.path_for(out))
      results['tasks'][task]['records'].append(record)
      write_results(out, results, command)  # partial tables as we go
  return write_results(out, results, command)
