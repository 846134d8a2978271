"""python -m experiments.redraw experiments/results/nlu [DIR ...]

Rewrites table.md and metric_vs_params.png of results folders from their
results.json alone (no training), e.g. after changing the plot style.
"""
from absl import app

from experiments import render


def main(argv):
  folders = argv[1:]
  if not folders:
    raise SystemExit('usage: python -m experiments.redraw DIR [DIR ...]')
  for folder in folders:
    print(render.render(folder))


if __name__ == '__main__':
  app.run(main)
