"""python -m ntk_prefix.plot DIR [DIR ...] --out=curves.png

Draws train loss and every eval metric of one or more workdirs (their
metrics.jsonl) against the step, one panel per metric.
"""
import argparse
import json
import os


def read(workdir: str) -> list:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot(workdirs: list, out: str) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  runs = {os.path.basename(os.path.normpath(w)) or w: read(w) for w in workdirs}
  keys = ['train_loss'] + sorted({k for rows in runs.values() for r in rows
                                  for k in r if k.startswith('eval_')})
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5),
                           squeeze=False)
  for ax, key in zip(axes[0], keys):
    for name, rows in runs.items():
      pts = [(r['step'], r[key]) for r in rows if key in r]
      if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker='o' if key != 'train_loss' else None,
                markersize=3, label=name)
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default='curves.png')
  args = parser.parse_args()
  print(plot(args.workdirs, args.out))


if __name__ == '__main__':
  main()
