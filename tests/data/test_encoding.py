"""A split's encoding: the batched tokenizer call gives what one call per
row gives, and the cached encoding is found by the tokenizer's content, not
by the folder it came from."""
import numpy as np
import pytest

from ntk_prefix import checkpoints
from ntk_prefix.data import pipeline

ROWS = [{'text': 'name[The Eagle], food[French]', 'target': 'A French place.'},
        {'text': 'name[Zizzi]', 'target': 'Zizzi is a pub near the river, '
         'with a long name that runs past the limit of the row.'}]


def _row_by_row(tokenizer, rows, max_length, pairs):
  """Reference: the tokenizer called on each row by itself."""
  ids = np.zeros((len(rows), max_length), np.int32)
  for i, r in enumerate(rows):
    if pairs is None:  # generation: prompt, then target and EOS
      p = tokenizer(f"Table: {r['text']}\nText:",
                    add_special_tokens=False)['input_ids']
      t = tokenizer(f" {r['target']}", add_special_tokens=False)['input_ids']
      seq = p + t + [tokenizer.eos_token_id]
    else:
      seq = tokenizer(r['text'], r['text_b'] if pairs else None)['input_ids']
    seq = seq[:max_length]
    ids[i, :len(seq)] = seq
  return ids


@pytest.mark.parametrize('task', ['e2e_nlg', 'sst2', 'cb'])
def test_batched_encoding_equals_one_call_per_row(task):
  if task == 'e2e_nlg':
    tok = checkpoints.load_tokenizer(checkpoints.default_decoder_path())
    rows, pairs = ROWS, None
  else:
    tok = checkpoints.load_tokenizer(checkpoints.default_encoder_path())
    pairs = task == 'cb'
    rows = [{'text': r['text'], 'text_b': r['target'] if pairs else '',
             'label': i} for i, r in enumerate(ROWS)]
  ds = pipeline.encode(task, rows, tok, 24, truncate=True)
  np.testing.assert_array_equal(ds.arrays['input_ids'],
                                _row_by_row(tok, rows, 24, pairs))
  assert list(ds.lengths) == [int(np.sum(x > 0)) for x in
                              ds.arrays['attention_mask']]
  if pairs:  # the second text's segment
    assert ds.arrays['token_type_ids'].max() == 1


def test_cached_encoding_follows_the_tokenizer_not_its_folder(tmp_path,
                                                             monkeypatch):
  tok = checkpoints.load_tokenizer(checkpoints.default_encoder_path())
  for name in ('a', 'b'):
    tok.save_pretrained(tmp_path / name)
  first, second = (checkpoints.load_tokenizer(str(tmp_path / n))
                   for n in ('a', 'b'))
  rows = [{'text': 'a fine film', 'text_b': '', 'label': 1}]
  monkeypatch.setattr(pipeline.builders, 'load_split',
                      lambda *args, **kwargs: rows)
  load = lambda t: pipeline.load('sst2', 'train', t, manual_dir='',
                                 data_dir=str(tmp_path / 'prepared'),
                                 max_length=8, truncate=False)
  calls = []
  encode = pipeline.encode
  monkeypatch.setattr(pipeline, 'encode',
                      lambda *a, **k: calls.append(a) or encode(*a, **k))
  kept = load(first)
  assert len(calls) == 1
  # The same tokenizer from another folder: read back, not encoded again.
  np.testing.assert_array_equal(load(second).arrays['input_ids'],
                                kept.arrays['input_ids'])
  assert len(calls) == 1
  # The folder's tokenizer changed: a new word, so a new encoding.
  first.add_tokens(['fine film'])
  assert len(first) - 1 in load(first).arrays['input_ids'][0]
  assert len(calls) == 2
