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
import json
import os
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


def _write(path: str, records: dict) -> None:
  # Sorted, one run a line: a sitting's new runs are a readable diff.
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  atomic.write_text(path, ''.join(
      json.dumps(records[k], sort_keys=True) + '\n' for k in sorted(records)))


def find(path: Optional[str], run: str, config) -> Optional[dict]:
  """The ledger's record of `run` if it was trained with `config`, else
  None (no ledger, no record, or a record of another config)."""
  if not path:
    return None
  record = read(path).get(run)
  if record is None or workdir_lib.differing_keys(
      record['config'], config, ('progress',)):
    return None
  return record


def add(path: Optional[str], run: str, config: dict, metrics: dict) -> None:
  """Records a finished run (replacing a record of another config; the
  scores of the same config are kept). A run trained from a tree with
  uncommitted changes is not kept: no checkout reproduces it, so a fresh
  clone trains it again from a commit."""
  if not path or str(metrics.get('commit', '')).endswith('+changes'):
    return
  records = read(path)
  old = records.get(run, {})
  record = {'run': run, 'config': config, 'metrics': metrics}
  if old.get('config') == config and 'scores' in old:
    record['scores'] = old['scores']
  if record != old:
    records[run] = record
    _write(path, records)


def scores(path: Optional[str], run: str, metrics: dict,
           compute: Callable[[], dict]) -> dict:
  """A run's reported scores: the ledger's, where it kept them for these
  final metrics (the run's folder and checkpoint may be gone), else
  compute()'s, then kept."""
  records = read(path) if path else {}
  kept = records.get(run, {})
  if 'scores' in kept and kept['metrics'] == metrics:
    return kept['scores']
  value = compute()
  if run in records and records[run]['metrics'] == metrics:
    records[run]['scores'] = value
    _write(path, records)
  return value
