"""Writes a reader never sees half-done: a temporary file, then a rename.

A kill mid-write leaves the old file (or none), never a truncated one: a
later resume or sweep reads a file whole or not at all.
"""
import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def open_for_write(path: str, mode: str = 'w'):
  """Like open(path, mode), but the file appears only when the block ends."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f'.{os.path.basename(path)}.')
  try:
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from others
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with open_for_write(path) as f:
    f.write(text)


def write_json(path: str, value, indent: int = 2) -> None:
  write_text(path, json.dumps(value, indent=indent) + '\n')


@contextlib.contextmanager
def replace_dir(path: str):
  """Yields a temporary folder to fill; it then replaces `path` whole.

  Between the two renames a kill can leave `path` missing, with the old
  folder kept as `path.old`; never a mix of old and new files.
  """
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(path)}.')
  os.chmod(tmp, 0o755)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = path + '.old'
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
