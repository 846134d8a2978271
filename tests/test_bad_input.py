"""Bad input gets one clear error naming the file, line or field, before the
first step, and never a network attempt with task.download=False."""
import os
import shutil

import numpy as np
import pytest

from conftest import REPO
from ntk_prefix import checkpoints, config as config_lib
from ntk_prefix.checkpoints.hf import CheckpointError
from ntk_prefix.data import builders

SHARED = config_lib.default_manual_dir()  # the real data files


def _copy_head(src, dst, lines):
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with open(src) as f, open(dst, 'w') as g:
    g.writelines(f.readline() for _ in range(lines))


@pytest.fixture
def small_data(tmp_path):
  """The first rows of the real SST-2 and CB files."""
  data = tmp_path / 'data'
  for sub, files in (('glue/SST-2', ('train.tsv', 'dev.tsv')),
                     ('superglue/CB', ('train.jsonl', 'val.jsonl'))):
    for f in files:
      _copy_head(os.path.join(SHARED, sub, f), str(data / sub / f), 12)
  return data


@pytest.fixture
def no_network(monkeypatch):
  import tensorflow_datasets as tfds

  def refuse(*args, **kwargs):
    raise AssertionError('a download was attempted')

  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      refuse)
  monkeypatch.setattr(tfds.download.DownloadManager, 'download', refuse)


def test_missing_unrequested_split_names_files_without_network(
    small_data, tmp_path, no_network):
  os.remove(small_data / 'glue/SST-2/dev.tsv')
  with pytest.raises(FileNotFoundError) as e:
    builders.load_split('sst2', 'train[:8]', str(small_data),
                        str(tmp_path / 'prepared'), download=False)
  msg = str(e.value)
  assert "missing data file(s) ['dev.tsv']" in msg
  assert str(small_data / 'glue/SST-2') in msg
  assert 'Nothing was downloaded' in msg


def test_present_files_prepare_without_network(small_data, tmp_path,
                                               no_network):
  rows = builders.load_split('sst2', 'train', str(small_data),
                             str(tmp_path / 'prepared'))
  assert len(rows) == 11  # 12 lines less the header


@pytest.mark.parametrize('task,path,bad,match', [
    ('sst2', 'glue/SST-2/train.tsv', 'a row without a tab\n',
     r'train.tsv, line 13: its fields do not match the header'),
    ('sst2', 'glue/SST-2/train.tsv', 'a sentence\tnot-a-number\n',
     r'train.tsv, line 13: invalid literal for int'),
    ('cb', 'superglue/CB/train.jsonl', '{"premise": "x", \n',
     r'train.jsonl, line 13: not valid JSON'),
    ('cb', 'superglue/CB/train.jsonl', '{"premise": "x", "hypothesis": "y", '
     '"label": "maybe"}\n', r"train.jsonl, line 13: .*'maybe'"),
])
def test_malformed_row_names_file_and_line(small_data, tmp_path, task, path,
                                           bad, match):
  with open(small_data / path, 'a') as f:
    f.write(bad)
  with pytest.raises(builders.DataError, match=match):
    builders.load_split(task, 'train', str(small_data),
                        str(tmp_path / 'prepared'))


def test_truncated_safetensors_names_the_file(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint('bert')
  copy = tmp_path / 'bert'
  shutil.copytree(path, copy)
  weights = copy / 'model.safetensors'
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=f'{weights} cannot be read as '
                     'safetensors.*truncated or corrupt'):
    checkpoints.load(str(copy))


def test_truncated_gguf_names_the_file(hf_checkpoint, tmp_path):
  from gguf_files import write_tiny_gguf
  _, model = hf_checkpoint('llama')
  path = tmp_path / 'tiny.gguf'
  write_tiny_gguf(path, model)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{path} cannot be read as GGUF.*'
                     'truncated or corrupt'):
    checkpoints.load(str(path))


def test_command_line_through_absl_names_a_misspelt_key(tmp_path):
  """train's command line is absl + an ml_collections config flag; a
  misspelt --config.KEY stops before any compute with the nearest keys, and
  a config file that adds a field the base does not have is an error too
  (the base config is locked)."""
  import subprocess
  import sys
  run = lambda *a: subprocess.run(
      [sys.executable, '-m', 'ntk_prefix.train', *a], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  proc = run(f'--config={REPO}/configs/default.py:runlocal',
             f'--workdir={tmp_path / "w"}', '--config.modle.path=x')
  assert proc.returncode != 0
  assert "Nearest valid keys: ['model.path'" in proc.stdout + proc.stderr
  assert not (tmp_path / 'w').exists()
  bad = tmp_path / 'bad.py'
  bad.write_text('from ntk_prefix.config import base_config\n'
                 'def get_config():\n  c = base_config()\n'
                 '  c.optimizer.learning_rate = 0.1\n  return c\n')
  proc = run(f'--config={bad}', f'--workdir={tmp_path / "w"}')
  assert proc.returncode != 0
  assert 'learning_rate' in proc.stdout + proc.stderr
  assert 'locked' in proc.stdout + proc.stderr
