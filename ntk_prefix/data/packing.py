"""Several examples per row of a training batch, so no step computes padding.

Instruction examples (E2E, GSM8K) vary in length, and a right-padded batch
spends up to half its tokens on padding (8 E2E rows under SmolLM2's
tokenizer: 513 real tokens in 8 x 128). Packing lays the batch's examples
end to end in fewer rows; `segment_ids` (1, 2, ... per example, 0 on
padding) keep each example's attention, positions and loss its own, so the
loss and its gradient are those of the unpacked batch (the loss is a mean
over answer tokens, which packing does not change). PEFT on a CPU has no
such mode: its padding-free collator needs flash-attention kernels.
"""
import numpy as np

# Token arrays carried into packed rows (each example's own slice).
_TOKEN_KEYS = ('input_ids', 'attention_mask', 'prompt_mask', 'loss_mask')


def first_fit(lengths: np.ndarray, width: int) -> list:
  """Examples (indices into lengths) per row: longest first, each into the
  first row with room (first-fit decreasing, within 22% of the fewest rows
  in the worst case and usually optimal for a batch's few rows)."""
  rows, room = [], []
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    n = int(lengths[i])
    if n > width:
      raise ValueError(f'an example of {n} tokens does not fit a packed row '
                       f'of {width}')
    for r, free in enumerate(room):
      if n <= free:
        rows[r].append(i)
        room[r] -= n
        break
    else:
      rows.append([i])
      room.append(width - n)
  return rows


def pack(arrays: dict, lengths: np.ndarray, widths: list,
         row_multiple: int = 1) -> dict:
  """Packed rows of one batch: arrays [b, >= max(lengths)] -> rows [r, w].

  Of the candidate `widths` that hold the longest example, the one needing
  the fewest tokens in all (rows x width, rows rounded up to a multiple of
  `row_multiple` so the data axis divides them) wins; ties take the
  narrower. Empty rows are all padding (segment 0, no loss), and a
  segment's first token has no loss (it is not predicted from the example
  before it).
  """
  longest = int(lengths.max())
  best = None
  for w in (w for w in widths if w >= longest):
    plan = first_fit(lengths, w)
    r = -(-len(plan) // row_multiple) * row_multiple
    if best is None or r * w < best[0] * best[1]:
      best = (r, w, plan)
  if best is None:
    raise ValueError(f'no packed width among {widths} holds an example of '
                     f'{longest} tokens')
  r, w, plan = best
  out = {k: np.zeros((r, w), arrays[k].dtype) for k in _TOKEN_KEYS
         if k in arrays}
  segments = np.zeros((r, w), np.int32)
  for row, members in enumerate(plan):
    at = 0
    for seg, i in enumerate(members, 1):
      n = int(lengths[i])
      for k in out:
        out[k][row, at:at + n] = arrays[k][i, :n]
      segments[row, at:at + n] = seg
      at += n
  out['segment_ids'] = segments
  if 'loss_mask' in out:  # no prediction across examples: a segment's
    start = np.zeros_like(segments, bool)  # first token carries no loss
    start[:, 1:] = segments[:, 1:] != segments[:, :-1]
    out['loss_mask'] = out['loss_mask'] * ~start
  return out
