"""The learning-rate search every table uses: its grid, then outward while
the best held-out score sits at an end (experiments.common.tune_and_repeat;
experiments.ntk_init)."""
import math
from typing import Callable

# The search extends its grid outward while the best score sits at an end,
# by this many points at most (the same rule for every method).
MAX_EXTRA_POINTS = 4
SEARCH_KEY = 'optimizer.lr'
SEARCH_RULE = (
    'extended outward (next rate on the 1-3-10 ladder) while the best '
    f'held-out score sits at an end, by at most {MAX_EXTRA_POINTS} points; '
    'a choice still at an end when the cap is reached is flagged as at '
    'the edge in its chosen column')


def next_rate(value: float, up: bool) -> float:
  """The next point outward on the 1-3-10 ladder the grids are written on
  (x3 or /3 elsewhere)."""
  k = math.floor(math.log10(value) + 1e-9)
  mantissa = round(value / 10 ** k, 6)
  if mantissa in (1.0, 3.0):
    ladder = {(1.0, True): 3 * 10 ** k, (3.0, True): 10 ** (k + 1),
              (1.0, False): 3 * 10 ** (k - 1), (3.0, False): 10 ** k}
    return float(f'{ladder[mantissa, up]:.3g}')
  return float(f'{value * 3 if up else value / 3:.3g}')


def search_outward(grid: list, evaluate: Callable[[dict], float], *,
                   higher_is_better: bool, key: str = SEARCH_KEY,
                   max_extra: int = MAX_EXTRA_POINTS) -> tuple:
  """Evaluates every point of `grid`; then, while the best value sits at the
  lowest or highest `key` searched, evaluates the next point beyond it
  (the best point's other overrides kept), up to `max_extra` more.

  Returns (points in the order run, values, edge), edge being 'top' or
  'bottom' if the best is still at that end, else ''.
  """
  points, values = list(grid), [evaluate(p) for p in grid]
  while True:
    sign = 1.0 if higher_is_better else -1.0
    best = max(sign * v for v in values)
    best_keys = {p[key] for p, v in zip(points, values) if sign * v == best}
    searched = sorted({p[key] for p in points})
    # An end counts only if no interior point ties with it.
    ends = best_keys & {searched[0], searched[-1]}
    edge = ''
    if len(searched) > 1 and ends and best_keys <= ends:
      edge = 'top' if searched[-1] in best_keys else 'bottom'
    if not edge or len(points) - len(grid) >= max_extra:
      return points, values, edge
    at = searched[-1] if edge == 'top' else searched[0]
    anchor = next(p for p, v in zip(points, values)
                  if p[key] == at and sign * v == best)
    point = {**anchor, key: next_rate(at, edge == 'top')}
    points.append(point)
    values.append(evaluate(point))
