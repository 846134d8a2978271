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


# Batches of more examples take first fit's rows (the search's depth is the
# number of examples, and first fit is within a row or so of the fewest).
SEARCH_MAX = 64


def first_fit(lengths: np.ndarray, width: int) -> list:
  """Examples (indices into lengths) per row: longest first, each into the
  first row with room (first-fit decreasing, within 22% of the fewest rows
  in the worst case and usually optimal for a batch's few rows)."""
  rows, room = [], []
  for i in _longest_first(lengths, width):
    n = int(lengths[i])
    for r, free in enumerate(room):
      if n <= free:
        rows[r].append(i)
        room[r] -= n
        break
    else:
      rows.append([i])
      room.append(width - n)
  return rows


def fewest_rows(lengths: np.ndarray, width: int, budget: int = 2000) -> list:
  """first_fit's rows, or fewer where a search finds them: rows are
  assigned depth first, longest example first, at most `budget` steps.
  First-fit misses packings a batch's few rows often have (8 E2E rows of
  513 tokens: 4 rows of 176 by first fit, 3 exist)."""
  rows = first_fit(lengths, width)
  fewest = -(-int(np.sum(lengths)) // width)
  order = _longest_first(lengths, width)
  while fewest < len(rows) and len(lengths) <= SEARCH_MAX:
    found = _search(lengths, order, len(rows) - 1, width, budget)
    if found is None:
      break
    rows = found
  return rows


def _longest_first(lengths: np.ndarray, width: int) -> list:
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  if order and lengths[order[0]] > width:
    raise ValueError(f'an example of {int(lengths[order[0]])} tokens does '
                     f'not fit a packed row of {width}')
  return order


def _search(lengths, order: list, k: int, width: int, budget: int):
  """Examples in k rows of `width`, placed in `order`, or None (none found
  within budget)."""
  room, rows = [width] * k, [[] for _ in range(k)]

  def place(j: int) -> bool:
    nonlocal budget
    if j == len(order):
      return True
    n, tried = int(lengths[order[j]]), set()
    for r in range(k):
      budget -= 1
      if budget < 0:
        return False
      if room[r] < n or room[r] in tried:  # rows of equal room are alike
        continue
      tried.add(room[r])
      room[r] -= n
      rows[r].append(order[j])
      if place(j + 1):
        return True
      room[r] += n
      rows[r].pop()
    return False

  return rows if place(0) else None


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
    plan = fewest_rows(lengths, w)
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
