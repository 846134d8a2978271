"""A run's folder: its recorded config, its lock, its metrics log, its
checkpoints. Nothing a run wrote is lost or silently replaced.

- config.json records the config; a rerun with another config stops before
  any compute (the fields in RESUMABLE may change: they do not change what
  the resumed steps compute, or, like total_steps, they extend the run).
- .lock is held (flock) while a run is live; the kernel drops it when the
  process dies, so a killed run never leaves a stale lock.
- metrics.jsonl is cut back to the resumed step; a torn last line from a
  kill is skipped with a warning.
- checkpoints/ (checkpointing.py): a checkpoint whose shapes do not fit
  the state is an error; only an unreadable (corrupt) one falls back to an
  older one.
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
from typing import Optional

from ntk_prefix import atomic, config as config_lib, methods
from ntk_prefix.checkpointing import WorkdirError

# Config fields a resumed run may change. total_steps extends (or shortens)
# the run, and with it the learning-rate schedule of the steps still to run.
RESUMABLE = ('total_steps', 'log_every', 'eval_every', 'checkpoint_every',
             'max_to_keep', 'async_checkpoints', 'progress', 'eval_batch_size',
             'task.data_dir', 'task.prepared_dir', 'model.remat',
             'model.attention_impl', 'model.scan_layers', 'mesh.', 'sharding.')




def flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_dict(config) -> dict:
  """The config as JSON sees it (tuples as lists), flattened."""
  return flat(json.loads(config.to_json_best_effort()))


_ABSENT = '<absent>'


def differing_keys(recorded: dict, config, resumable=RESUMABLE) -> dict:
  """{key: (recorded, now)} for the keys that differ and may not. A key the
  recorded config lacks (a field added to the codebase since) counts only if
  it is now set to something other than its default."""
  given = json.loads(config.to_json_best_effort())
  now, rec = flat(given), flat(recorded)
  defaults = config_dict(config_lib.base_config())
  # A run reads only its own method's options (method.<name>.*): another
  # method's defaults may change without making it another run. Its own are
  # compared as the values the run uses (a preset's, where the config left
  # the default: a preset run recorded before a default changed is the
  # same run).
  own = f'method.{now.get("method.name")}.'
  if rec.get('method.name') == now.get('method.name'):
    for d, cfg in ((rec, recorded), (now, given)):
      task = cfg.get('task', {}).get('name', '')
      d.update({own + k: v for k, v in methods.effective_options(
          cfg['method'], task).items()})

  def same(k):
    if k.startswith('method.') and k.count('.') > 1 and not k.startswith(own):
      return True
    if k not in rec and k in defaults:
      return now.get(k) == defaults[k]
    return rec.get(k, _ABSENT) == now.get(k, _ABSENT)

  return {k: (rec.get(k, _ABSENT), now.get(k, _ABSENT))
          for k in sorted(set(rec) | set(now))
          if not same(k)
          and not any(k == r or (r.endswith('.') and k.startswith(r))
                      for r in resumable)}


def recorded_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path} is not valid JSON ({e}); it records the run '
                       'in this folder. Restore it, or use another --workdir.'
                       ) from None


def has_history(workdir: str) -> bool:
  """Whether a run here has logged or checkpointed anything."""
  ckpts = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
    return True
  metrics = os.path.join(workdir, 'metrics.jsonl')
  return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def check_config(workdir: str, config, allow_change: bool = False,
                 resumable=RESUMABLE) -> None:
  """Stops a rerun whose config differs from the one recorded in workdir."""
  recorded = recorded_config(workdir)
  if recorded is None or not has_history(workdir):
    return
  differ = differing_keys(recorded, config, resumable)
  if differ and not allow_change:
    shown = '; '.join(f'{k}: {a!r} recorded, {b!r} now'
                      for k, (a, b) in list(differ.items())[:8])
    more = f' (and {len(differ) - 8} more)' if len(differ) > 8 else ''
    raise WorkdirError(
        f'{workdir} holds a run of another config: {shown}{more}. Either '
        'use a new --workdir for this config, or resume this run with its '
        'recorded config; to continue it under the new values on purpose, '
        'pass --allow_config_change (the checkpoint must still fit).')


def record_config(workdir: str, config) -> None:
  atomic.write_text(os.path.join(workdir, 'config.json'),
                    config.to_json_best_effort(indent=2))


@contextlib.contextmanager
def lock(workdir: str, hold: bool = True):
  """Holds workdir/.lock for the block; a second live run is refused.
  hold=False (processes other than the writer of a run) only makes DIR."""
  os.makedirs(workdir, exist_ok=True)
  if not hold:
    yield
    return
  path = os.path.join(workdir, '.lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
      raise WorkdirError(
          f'{workdir} is in use by another live run ({holder or "unknown"}).'
          ' Wait for it to finish, or use another --workdir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}'.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


class MetricsLog:
  """metrics.jsonl (cut back to the resumed step) plus TensorBoard."""

  def __init__(self, workdir: str, resume_step: int, writer: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = writer
    self.rows = [r for r in read_metrics(self.path)
                 if r['step'] <= resume_step]
    self.tb = None
    if not writer:  # other processes of a run keep the rows, write nothing
      return
    atomic.write_text(self.path, ''.join(json.dumps(r) + '\n'
                                         for r in self.rows))
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # optional
      self.tb = None

  def write(self, step: int, metrics: dict) -> None:
    row = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self.rows.append(row)
    if not self.writer:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
      f.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, float(v), step)
      self.tb.flush()


def read_metrics(path: str) -> list:
  """The rows of a metrics.jsonl; a torn line (a kill mid-write) is skipped
  with a warning."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        int(row['step'])
      except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        print(f'{path}, line {n}: skipping a torn or malformed row '
              f'({line.strip()[:80]!r})', file=sys.stderr)
        continue
      rows.append(row)
  return rows
