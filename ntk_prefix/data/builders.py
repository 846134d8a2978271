"""tensorflow-datasets builders for the experiments' tasks (array_record).

They read the original files from a manual directory (this workplace:
../shared/data; elsewhere the folder a user names with task.data_dir) and,
where the files are public and a network is present, download them. No
TensorFlow is needed: examples are written as array_record and read back with
`builder.as_data_source(split)`.
"""
import contextlib
import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds

from ntk_prefix.data.task_files import TASKS, TaskFiles, _rows


class _LocalInfo(tfds.core.DatasetInfo):
  """These datasets are ours: never look for their metadata on tfds's GCS
  bucket. (tfds's lookup also leaves an empty temp folder behind for every
  builder made before its data is prepared: hundreds per test run.)"""

  def initialize_from_bucket(self) -> None:
    pass


def make_builder_class(name: str, task: TaskFiles):
  """A tfds GeneratorBasedBuilder class for one task."""
  task_name = name

  class Builder(tfds.core.GeneratorBasedBuilder):
    name = f'ntk_prefix_{task_name}'
    _download_config_manual_dir = None  # set by load_split
    _allow_download = False  # set by load_split: task.download
    VERSION = tfds.core.Version('1.0.0')
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f'Place the original files {sorted(task.splits.values())} in '
        f'<manual_dir>/{task.subdir}/ (task.data_dir in the config).')

    def _info(self):
      return _LocalInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'text': tfds.features.Text(), 'text_b': tfds.features.Text(),
              'target': tfds.features.Text(), 'label': np.int64,
              'image': tfds.features.Tensor(shape=(8, 8), dtype=np.float32),
          }))

    def _split_generators(self, dl_manager):
      out = {}
      for split, filename in task.splits.items():
        path = ''
        if task.reader != 'sklearn_digits':
          manual = self._manual_dir_or_none()
          path = os.path.join(manual or '', task.subdir, filename)
          if manual is None or not os.path.exists(path):
            if task.url is None or not self._allow_download:
              raise FileNotFoundError(
                  f'{name}: {path} is missing. ' + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
            extracted = dl_manager.download_and_extract(task.url)
            path = os.path.join(extracted, os.path.basename(task.subdir),
                                filename)
        out[split] = self._generate_examples(path, split)
      return out

    def _manual_dir_or_none(self):
      manual = self._download_config_manual_dir
      return manual if manual and os.path.isdir(manual) else None

    def _generate_examples(self, path, split):
      yield from _rows(task, path, split)

  return Builder


BUILDERS = {name: make_builder_class(name, task) for name, task in TASKS.items()}

# Any image-classification set tfds has prepared (e.g. with `tfds build
# cifar100 --file_format=array_record`) is task.name='tfds:cifar100'.
TFDS_PREFIX = 'tfds:'


def task_kind(task_name: str) -> str:
  if task_name.startswith(TFDS_PREFIX):
    return 'image'
  if task_name not in TASKS:
    raise ValueError(f'task.name={task_name!r} is not a task; known: '
                     f'{sorted(TASKS)}, or tfds:NAME for an image set '
                     'prepared by tensorflow-datasets.')
  return TASKS[task_name].kind


def tfds_image_source(task_name: str, split: str, data_dir: str) -> tuple:
  """(random-access source of {'image', 'label'}, number of classes) of a
  tfds image set prepared as array_record in `data_dir`."""
  name = task_name[len(TFDS_PREFIX):]
  builder = tfds.builder(name, data_dir=data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'task.name={task_name!r}: {name} is not prepared in '
        f'{builder.data_dir}. Prepare it once where its files are, with '
        f'`tfds build {name} --file_format=array_record --data_dir=DIR`, and '
        'set task.prepared_dir=DIR.')
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise ValueError(f'task.name={task_name!r}: expected features image and '
                     f'label; {name} has {sorted(features)}.')
  if split.split('[', 1)[0] not in builder.info.splits:
    raise ValueError(f'{name} has no split {split!r}; it has '
                     f'{sorted(builder.info.splits)}.')
  return builder.as_data_source(split), features['label'].num_classes


@contextlib.contextmanager
def _preparing(builder):
  """One process at a time prepares a dataset folder (an flock beside it)."""
  parent = os.path.dirname(os.fspath(builder.data_dir))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, '.prepare.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    yield


def load_split(task_name: str, split: str, manual_dir: str,
               data_dir: str, download: bool = False, limit: int = -1) -> list:
  """The examples of a split as a list of dicts (prepared once, then read):
  all of them, or the `limit` that `subset` keeps, reading only those."""
  if task_name not in BUILDERS:
    raise ValueError(f'task.name={task_name!r} is not a task; known: '
                     f'{sorted(BUILDERS)}.')
  task = TASKS[task_name]
  base = split.split('[', 1)[0]  # tfds slices: 'train[:-200]', 'train[90%:]'
  if base not in task.splits:
    raise ValueError(f'{task_name} has no split {split!r}; it has '
                     f'{sorted(task.splits)} (tfds slices of them, e.g. '
                     f"'train[:-200]', are allowed).")
  builder = BUILDERS[task_name](data_dir=data_dir,
                                file_format='array_record')
  if task.reader != 'sklearn_digits' and not builder.is_prepared():
    # Preparing reads every split's file; without download, all must be here.
    where = os.path.join(manual_dir, task.subdir)
    missing = [f for f in task.splits.values()
               if not os.path.exists(os.path.join(where, f))]
    if missing and not (download and task.url):
      online = (f' or set task.download=True to fetch {task.url}'
                if task.url else '')
      raise FileNotFoundError(
          f'{task_name}: missing data file(s) {missing} in {where} (looked '
          f'for {sorted(task.splits.values())}; preparing the task reads all '
          f'of them). Set task.data_dir to the folder holding {task.subdir}/ '
          f'(this workplace: ../shared/data){online}. Nothing was '
          'downloaded.')
    if not os.path.isdir(manual_dir):
      manual_dir = None  # downloading: tfds needs no manual dir
  Builder = BUILDERS[task_name]
  Builder._download_config_manual_dir = manual_dir
  Builder._allow_download = bool(download)
  if not builder.is_prepared():
    with _preparing(builder):
      # Another process (a second table, another host) may have prepared it
      # while this one waited: tfds would then fail renaming into its folder.
      builder = Builder(data_dir=data_dir, file_format='array_record')
      builder.download_and_prepare(download_config=tfds.download.
                                   DownloadConfig(manual_dir=manual_dir))
  source = builder.as_data_source(split)
  return [source[i] for i in subset(list(range(len(source))), limit)]


def subset(rows: list, limit: int) -> list:
  """The rows a split's `limit` keeps: a fixed, seeded subset (all if
  limit <= 0); the training pipeline and split_labels read the same rows."""
  if 0 < limit < len(rows):
    idx = np.sort(np.random.RandomState(1234).permutation(len(rows))[:limit])
    rows = [rows[i] for i in idx]
  return rows


def split_labels(task_name: str, split: str, manual_dir: str, data_dir: str,
                 limit: int = -1, download: bool = False) -> np.ndarray:
  """The class labels of a split (of the rows `limit` keeps), read without
  tokenising anything."""
  if task_name.startswith(TFDS_PREFIX):
    source, _ = tfds_image_source(task_name, split, data_dir)
    return np.array([int(source[i]['label'])
                     for i in subset(list(range(len(source))), limit)])
  rows = load_split(task_name, split, manual_dir, data_dir, download, limit)
  return np.array([int(r['label']) for r in rows])
