"""Where a number came from: the commit (marked when the tree has changes),
the date and the command line, stamped on every results folder."""
import datetime
import functools
import shlex
import subprocess


# What a command runs: a change here, tracked or not, marks a stamp. Edits
# elsewhere (README, tests, notes) do not change a run's numbers; marking
# them made most runs of a table written beside its README '+changes'.
SOURCE_DIRS = ('ntk_prefix', 'configs', 'experiments', 'benchmarks',
               'setup.py')
# Outputs, not code: a table being written must not mark the runs it
# starts next as '+changes'.
OUTPUTS = ('experiments/results', 'benchmarks/results')


def git_commit(exclude: tuple = ()) -> str:
  """The short commit, with '+changes' when a file under SOURCE_DIRS differs
  from it or is untracked there (OUTPUTS and paths in `exclude` do not
  count)."""
  try:
    git = lambda *a: subprocess.check_output(['git', *a], text=True,
                                             stderr=subprocess.DEVNULL)
    commit = git('rev-parse', '--short', 'HEAD').strip()
    root = git('rev-parse', '--show-toplevel').strip()
    skip = [f':!{p}' for p in (*OUTPUTS, *exclude)]
    changed = git('-C', root, 'diff', '--name-only', 'HEAD', '--',
                  *SOURCE_DIRS, *skip)
    untracked = git('-C', root, 'ls-files', '--others', '--exclude-standard',
                    '--', *SOURCE_DIRS, *skip)
    return commit + ('+changes' if changed.strip() or untracked.strip()
                     else '')
  except Exception:  # not a git checkout
    return 'unknown'


@functools.lru_cache(maxsize=None)
def process_commit() -> str:
  """git_commit() as it was when this process first asked: a long-lived
  process (a table's dozens of runs) keeps running the code it imported,
  whatever the checkout is moved to meanwhile."""
  return git_commit()


def device() -> str:
  """What ran it: 'cpu' or the accelerator's name, e.g. 'NVIDIA H100 80GB
  HBM3' (a wall time means little without it)."""
  import jax
  return jax.devices()[0].device_kind


def command_line(module: str, argv: list) -> str:
  """The command that reruns this: `python -m MODULE ARGS`."""
  return ' '.join(shlex.quote(a) for a in ['python', '-m', module, *argv])


def stamp(command: str, exclude: tuple = ()) -> dict:
  return {'command': command, 'commit': git_commit(exclude),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%d %H:%M UTC')}
