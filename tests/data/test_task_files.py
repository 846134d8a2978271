"""Task data files: a missing file is named without a network attempt
(task.download=False), present files prepare offline, and a malformed row
names its file and line."""
import os
import tempfile

import pytest

from ntk_prefix import config as config_lib
from ntk_prefix.data import builders, task_files

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
                                               no_network, monkeypatch):
  temp = tmp_path / 'temp'  # the process's temp folder, watched
  temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))
  rows = builders.load_split('sst2', 'train', str(small_data),
                             str(tmp_path / 'prepared'))
  assert len(rows) == 11  # 12 lines less the header
  # A limit reads only the rows `subset` keeps, the same rows.
  kept = builders.load_split('sst2', 'train', str(small_data),
                             str(tmp_path / 'prepared'), limit=4)
  fields = lambda rs: [(r['text'], int(r['label'])) for r in rs]
  assert fields(kept) == fields(builders.subset(rows, 4)) and len(kept) == 4
  assert not os.listdir(temp)  # tfds's GCS metadata lookup left folders


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
  with pytest.raises(task_files.DataError, match=match):
    builders.load_split(task, 'train', str(small_data),
                        str(tmp_path / 'prepared'))



_PREPARE = '''
import sys, time
from ntk_prefix.data import builders
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # start together
print(len(builders.load_split('sst2', 'train', sys.argv[1], sys.argv[2])))
'''


def test_two_processes_prepare_the_same_task_at_once(tmp_path):
  """Two tables started together both read the task (tfds alone fails the
  second one renaming into a folder the first has just written)."""
  import subprocess
  import sys
  import time
  data = tmp_path / 'data'
  for f in ('train.tsv', 'dev.tsv'):
    _copy_head(os.path.join(SHARED, 'glue/SST-2', f),
               str(data / 'glue/SST-2' / f), 3001)
  start = str(time.time() + 12)  # both have imported tfds by then
  procs = [subprocess.Popen(
      [sys.executable, '-c', _PREPARE, str(data), str(tmp_path / 'prepared'),
       start], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for _ in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert out.split()[-1] == '3000'  # tfds prints its progress first
