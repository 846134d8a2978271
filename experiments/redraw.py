"""python -m experiments.redraw experiments/results/nlu [DIR ...]

Rewrites table.md and the figure of results folders from their
results.json alone (no training), e.g. after changing the plot style.
"""
import json
import os

from absl import app

from experiments import prefix_length_report, render


def redraw(folder: str) -> str:
  """The folder's table.md (returned) and figure, by the table's kind."""
  with open(os.path.join(folder, 'results.json')) as f:
    results = json.load(f)
  if prefix_length_report.is_prefix_length(results):
    return prefix_length_report.write(folder, results)
  return render.render(folder)


def main(argv):
  folders = argv[1:]
  if not folders:
    raise SystemExit('usage: python -m experiments.redraw DIR [DIR ...]')
  for folder in folders:
    print(redraw(folder))


if __name__ == '__main__':
  app.run(main)
