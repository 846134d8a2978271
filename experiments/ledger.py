"""Finished runs of a table, kept in the repository next to its results.

A run's folder holds its checkpoints and lives on the machine that trained
it; a table of a hundred runs outlives many machines. So each finished run
also goes into the table's ledger (runs.jsonl: one line per run, its
recorded config, final metrics and reported scores), which is committed
with the results. A later sitting on a fresh clone reuses a ledger run
exactly as it would its folder: only if the recorded config equals the one
the table asks for now (workdir.differing_keys, the rule a folder obeys).
To rerun a run, delete its line (and its folder).
"""
import contextlib
import fcntl
import glob
import json
import os
import sys
from typing import Callable, Optional

from ntk_prefix import atomic, workdir as workdir_lib

FILE = 'runs.jsonl'


def path_for(out: str) -> str:
  """The ledger of a results folder, or of a results file (x.md: x.runs.jsonl)."""
  stem, ext = os.path.splitext(out)
  return stem + '.' + FILE if ext else os.path.join(out, FILE)


def read(path: str) -> dict:
  """{run: record} of the ledger at path ({} if there is none)."""
  if not os.path.exists(path):
    return {}
  records = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise SystemExit(
            f'{path} line {n} is not JSON ({e}). It lists the finished runs '
            'of a table: restore it from git (git checkout -- FILE), or '
            'delete the line to rerun that run.') from None
      records[record['run']] = record
  return records


@contextlib.contextmanager
def _locked(path: str):
  """Read-modify-write of one ledger by one process at a time (two table
  commands writing one folder's ledger would otherwise lose a line): a
  lock on the folder, so no lock file is left beside the results."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd = os.open(folder, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def _write(path: str, records: dict) -> None:
  # Sorted, one run a line: a sitting's new runs are a readable diff.
  atomic.write_text(path, ''.join(
      json.dumps(records[k], sort_keys=True) + '\n' for k in sorted(records)))


def find(path: Optional[str], run: str, config,
         kind: str = 'run') -> Optional[dict]:
  """The record of a run trained with `config`: this ledger's own record of
  `run`, else a record of the same config in any table's ledger beside it
  (ntk_init's `zeros` runs are the E2E table's ntk_attention runs). None if
  there is none, or no ledger. `kind` tells a trained run ('run') from
  what a table derived from one (e.g. 'compressed'), which shares its
  config."""
  if not path:
    return None
  own = read(path).get(run)
  if own is not None and _matches(own, config, kind):
    return own
  results = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  for other in sorted(glob.glob(os.path.join(results, '*', '*' + FILE))):
    for record in read(other).values():
      if _matches(record, config, kind):
        return record
  return None


def _matches(record: dict, config, kind: str) -> bool:
  rec = record['config']
  if record.get('kind', 'run') != kind or (rec.get('seed'), rec.get('optimizer', {}).get('lr'),
      rec.get('method', {}).get('name')) != (
          config.seed, config.optimizer.lr, config.method.name):
    return False  # most records: told apart without the full comparison
  return not workdir_lib.differing_keys(rec, config, ('progress',))


def add(path: Optional[str], run: str, config: dict, metrics: dict,
        scores: Optional[dict] = None, kind: str = 'run') -> None:
  """Records a finished run (replacing another record of `run`; the scores
  of the same run are kept). A run trained from a tree with
  uncommitted changes is not kept: no checkout reproduces it, so a fresh
  clone trains it again from a commit."""
  if not path:
    return
  if str(metrics.get('commit', '')).endswith('+changes'):
    print(f'{run}: trained from uncommitted code ({metrics["commit"]}), so '
          f'not kept in {path}; its folder still holds it.', file=sys.stderr)
    return
  with _locked(path):
    records = read(path)
    old = records.get(run, {})
    record = {'run': run, 'config': config, 'metrics': metrics,
              **({} if kind == 'run' else {'kind': kind})}
    if scores is None and (old.get('config'), old.get('metrics')) == (
        config, metrics):
      scores = old.get('scores')
    if scores is not None:
      record['scores'] = scores
    if record != old:
      records[run] = record
      _write(path, records)


def kept_scores(path: Optional[str], run: str,
                metrics: dict) -> Optional[dict]:
  """The scores the ledger kept for `run` with these final metrics, or None."""
  kept = read(path).get(run, {}) if path else {}
  return kept.get('scores') if kept.get('metrics') == metrics else None


def scores(path: Optional[str], run: str, metrics: dict,
           compute: Callable[[], dict]) -> dict:
  """A run's reported scores: the ledger's, where it kept them for these
  final metrics (the run's folder and checkpoint may be gone), else
  compute()'s, then kept."""
  kept = kept_scores(path, run, metrics)
  if kept is not None:
    return kept
  value = compute()
  if path:
    with _locked(path):
      records = read(path)
      if run in records and records[run]['metrics'] == metrics:
        records[run]['scores'] = value
        _write(path, records)
  return value
