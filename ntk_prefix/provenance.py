"""Where a number came from: the commit (marked when the tree has changes),
the date and the command line, stamped on every results folder."""
import datetime
import shlex
import subprocess


def git_commit(exclude: tuple = ()) -> str:
  """The short commit, with '+changes' when tracked files differ from it
  (paths in `exclude`, such as the results being written, do not count)."""
  try:
    commit = subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'],
                                     text=True,
                                     stderr=subprocess.DEVNULL).strip()
    dirty = subprocess.run(
        ['git', 'diff', '--quiet', 'HEAD', '--', '.'] +
        [f':!{p}' for p in exclude], check=False).returncode
    return commit + ('+changes' if dirty else '')
  except Exception:  # not a git checkout
    return 'unknown'


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
