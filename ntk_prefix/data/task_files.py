"""The tasks' original files (GLUE/SuperGLUE TSV and JSONL, GSM8K, E2E) and
how a row becomes an example; a bad row is an error naming file and line."""
import csv
import dataclasses
import json
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskFiles:
  """Where a task's splits live inside the manual dir, and how to read them."""
  subdir: str
  splits: dict  # split name -> file name
  reader: str  # 'tsv', 'jsonl', 'csv', 'sklearn_digits'
  kind: str  # 'text_classification', 'text_pair', 'generation', 'image'
  labels: tuple = ()
  url: Optional[str] = None  # zip with the same layout, for online use
  citation: str = ''


TASKS = {
    'sst2': TaskFiles('glue/SST-2', {'train': 'train.tsv',
                                     'validation': 'dev.tsv'}, 'tsv',
                      'text_classification', ('negative', 'positive'),
                      'https://dl.fbaipublicfiles.com/glue/data/SST-2.zip'),
    'rte': TaskFiles('glue/RTE', {'train': 'train.tsv',
                                  'validation': 'dev.tsv'}, 'tsv',
                     'text_pair', ('entailment', 'not_entailment'),
                     'https://dl.fbaipublicfiles.com/glue/data/RTE.zip'),
    'cb': TaskFiles('superglue/CB', {'train': 'train.jsonl',
                                     'validation': 'val.jsonl'}, 'jsonl',
                    'text_pair', ('entailment', 'contradiction', 'neutral'),
                    'https://dl.fbaipublicfiles.com/glue/superglue/data/v2/'
                    'CB.zip'),
    'boolq': TaskFiles('superglue/BoolQ', {'train': 'train.jsonl',
                                           'validation': 'val.jsonl'},
                       'jsonl', 'text_pair', ('False', 'True'),
                       'https://dl.fbaipublicfiles.com/glue/superglue/data/'
                       'v2/BoolQ.zip'),
    'gsm8k': TaskFiles('gsm8k', {'train': 'train.jsonl', 'test': 'test.jsonl'},
                       'jsonl', 'generation'),
    'e2e_nlg': TaskFiles('e2e_nlg', {'train': 'trainset.csv',
                                     'validation': 'devset.csv',
                                     'test': 'testset_w_refs.csv'}, 'csv',
                         'generation'),
    'digits': TaskFiles('', {'train': '', 'test': ''}, 'sklearn_digits',
                        'image', tuple(str(i) for i in range(10))),
}


def _rows(task: TaskFiles, path: str, split: str):
  """(key, example dict) pairs of one split's original file."""
  if task.reader == 'sklearn_digits':
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    cut = int(0.8 * len(order))
    idx = order[:cut] if split == 'train' else order[cut:]
    for i in idx:
      img = (digits.images[i] / 16.0).astype(np.float32)  # [8, 8] in [0, 1]
      yield int(i), {'image': img, 'label': int(digits.target[i]),
                     'text': '', 'text_b': '', 'target': ''}
    return
  with open(path, encoding='utf-8') as f:
    if task.reader == 'jsonl':
      for i, (line_no, row) in enumerate(_jsonl(f, path)):
        yield i, _checked_example(task, row, path, line_no)
      return
    rows = (csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
            if task.reader == 'tsv' else csv.DictReader(f))
    for i, row in enumerate(rows):
      yield i, _checked_example(task, row, path, rows.line_num)


class DataError(ValueError):
  """A malformed row in a task's original files."""


def _jsonl(f, path: str):
  for n, line in enumerate(f, 1):
    if line.strip():
      try:
        yield n, json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f'{path}, line {n}: not valid JSON ({e.msg} at '
                        f'column {e.colno}). Fix or remove the row.') from None


def _checked_example(task: TaskFiles, row, path: str, line_no: int) -> dict:
  """_example, with errors naming the file and line of the bad row."""
  try:
    if not isinstance(row, dict) or None in row or None in row.values():
      raise ValueError('its fields do not match the header (a missing or '
                       'extra tab or comma?)')
    return _example(task, row)
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path}, line {line_no}: {e}. Fix or remove the row.'
                    ) from None


def _label(task: TaskFiles, label: str) -> int:
  if label not in task.labels:
    raise ValueError(f'label {label!r} is not one of {list(task.labels)}')
  return task.labels.index(label)


def _example(task: TaskFiles, row: dict) -> dict:
  ex = {'text': '', 'text_b': '', 'target': '', 'label': -1,
        'image': np.zeros((8, 8), np.float32)}
  if 'sentence' in row:  # SST-2
    ex['text'], ex['label'] = row['sentence'], int(row['label'])
  elif 'sentence1' in row:  # RTE
    ex['text'], ex['text_b'] = row['sentence1'], row['sentence2']
    ex['label'] = _label(task, row['label'])
  elif 'premise' in row:  # CB
    ex['text'], ex['text_b'] = row['premise'], row['hypothesis']
    ex['label'] = _label(task, row['label'])
  elif 'passage' in row:  # BoolQ
    ex['text'], ex['text_b'] = row['question'], row['passage']
    ex['label'] = int(bool(row['label']))
  elif 'question' in row:  # GSM8K
    ex['text'], ex['target'] = row['question'], row['answer']
  elif 'mr' in row:  # E2E
    ex['text'], ex['target'] = row['mr'], row['ref']
  else:
    raise ValueError(f'unrecognised row with fields {sorted(row)}')
  return ex
