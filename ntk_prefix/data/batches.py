"""Batches of a `Dataset` with a deterministic, checkpointable order.

The batch of training step s is a pure function of (seed, s): the order is a
fresh seeded permutation per epoch. The iterator's whole state is therefore
the step, which the checkpoint already holds, and resuming replays exactly.
Rows are cut to a few bucketed widths (each width is one compilation), and
generation batches carry their loss positions, gathered before the LM head.
"""
import numpy as np

from ntk_prefix.data import packing
from ntk_prefix.data.pipeline import Dataset


def _buckets(max_length: int) -> list:
  out, b = [], 16
  while b < max_length:
    out.append(b)
    b *= 2
  return out + [max_length]


def _row_buckets(ds: Dataset) -> list:
  """The widths a batch of `ds` is cut to (its padded width the largest)."""
  return _buckets(ds.arrays.get('input_ids', np.zeros((1, 1))).shape[1])


def _slot_buckets(width: int) -> list:
  """Loss positions per row: the row widths and the midpoints between them
  (x 1.5), so at most a third of the LM head's rows are padding, not half
  (one row of SmolLM2's 49k-way head costs what 8 of its 30 layers cost on
  one token)."""
  out = set()
  for b in _buckets(width):
    out.update([b] + ([3 * b // 2] if 3 * b // 2 < width else []))
  return sorted(out)


def _bucket(n: int, buckets: list) -> int:
  """The smallest bucket that holds n (at least 1), else the largest."""
  return next((b for b in buckets if b >= max(n, 1)), buckets[-1])


def _trim(ds: Dataset, idx: np.ndarray, buckets: list,
          rows: slice = slice(None)) -> dict:
  """Rows idx[rows], cut to the smallest bucket that holds the longest row
  of all of idx (every process of a run cuts its rows to the same width)."""
  width = _bucket(int(ds.lengths[idx].max()) if len(idx) else 1, buckets)
  if 'loss_mask' in ds.arrays:  # the same bucket on every process
    slots = _bucket(int(ds.arrays['loss_mask'][idx, 1:width].sum(1).max())
                    if len(idx) else 1, _slot_buckets(width))
  idx = idx[rows]
  out = {}
  for k, v in ds.arrays.items():
    out[k] = v[idx][:, :width] if v.ndim == 2 and k != 'labels' else v[idx]
  if 'loss_mask' in out:
    out.update(loss_positions(out['input_ids'], out['loss_mask'], slots))
  return out


def loss_positions(ids: np.ndarray, loss_mask: np.ndarray,
                   slots: int) -> dict:
  """Per row, the positions p whose next token p + 1 carries loss, padded to
  `slots`: 'loss_positions' [b, slots], 'loss_targets' (the tokens p + 1)
  and 'loss_weights' (1 on real positions, 0 on padding)."""
  b = ids.shape[0]
  positions = np.zeros((b, slots), np.int32)
  targets = np.zeros((b, slots), np.int32)
  weights = np.zeros((b, slots), np.float32)
  for i in range(b):
    where = np.flatnonzero(loss_mask[i, 1:])[:slots]
    n = len(where)
    positions[i, :n] = where
    targets[i, :n] = ids[i, where + 1]
    weights[i, :n] = 1.0
  return {'loss_positions': positions, 'loss_targets': targets,
          'loss_weights': weights}


def train_batch(ds: Dataset, step: int, batch_size: int, seed: int,
                rows: slice = slice(None), pack: bool = False,
                row_multiple: int = 1) -> dict:
  """The batch of training step `step` (epochs of seeded permutations);
  `rows` of it only, for a process that holds a part of the batch.

  pack: the examples laid end to end in as few rows as hold them (a
  multiple of `row_multiple`), with 'segment_ids' (data/packing.py); the
  rows are all of them, which every process packs alike and slices itself.
  """
  n = len(ds)
  start = step * batch_size
  idx = []
  while len(idx) < batch_size:
    epoch, offset = divmod(start + len(idx), n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx.extend(perm[offset:offset + batch_size - len(idx)])
  buckets = _row_buckets(ds)
  if pack:
    # Wider rows than any example waste less of their ends; a few widths
    # only, since every (rows, width) shape is one more compilation. With
    # data/packing.py's search, steps of a quarter width up to twice it left
    # 6.6% of E2E's packed tokens padding (15.7% with first fit and steps of
    # a half) in as few shapes (batches of 8, max length 128).
    width = buckets[-1]
    return _packed(ds, np.asarray(idx), buckets + [
        width * q // 4 for q in range(5, 9)], row_multiple)
  return _trim(ds, np.asarray(idx), buckets, rows)


def _packed(ds: Dataset, idx: np.ndarray, widths: list,
            row_multiple: int) -> dict:
  if 'loss_mask' not in ds.arrays:
    raise ValueError('task.pack=True packs generation examples (a prompt and '
                     'its answer); this task has labels per example. Set '
                     'task.pack=False.')
  out = packing.pack({k: v[idx] for k, v in ds.arrays.items()},
                     ds.lengths[idx], widths, row_multiple)
  most = int(out['loss_mask'][:, 1:].sum(1).max())
  slots = _bucket(most, _slot_buckets(out['input_ids'].shape[1]))
  out.update(loss_positions(out['input_ids'], out['loss_mask'], slots))
  return out


def eval_batches(ds: Dataset, batch_size: int, rows: slice = slice(None)):
  """Fixed-order batches; the last is padded with copies weighted 0.
  `rows` of each only, for a process that holds a part of the batch."""
  n, buckets = len(ds), _row_buckets(ds)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    weights = np.ones(batch_size, np.float32)
    if len(idx) < batch_size:
      weights[len(idx):] = 0
      idx = np.concatenate([idx, np.zeros(batch_size - len(idx), int)])
    batch = _trim(ds, idx, buckets, rows)
    batch['weights'] = weights[rows]
    yield batch
