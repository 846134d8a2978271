r"""How far each method's initial state moves the frozen model: the held-out
token loss of every method at step 0, beside the frozen model's.

  python -m experiments.init_loss --task=e2e_nlg [--methods=...] [--seeds=2]
  python -m experiments.init_loss --task=sst2 \
      --methods=none,ntk_attention,ntk_attention:official_glm

A method may be given as METHOD:PRESET (see `python -m ntk_prefix.methods
--presets`).

A method whose initial state is near the identity starts at the frozen
model's loss; one that starts far above it spends its first steps undoing
its own initialisation (see the README on IAPT). Writes
experiments/results/<task>/init_loss.md (NLU tasks: experiments/results/nlu/
init_loss_<task>.md); no training, no decoding.
"""
import os

from experiments import common, flags, lm, nlu
from experiments.held_out import initial_losses
from ntk_prefix import atomic, config as config_lib, provenance


def render(losses: dict, task: str, eval_split: str, stamp: dict) -> str:
  frozen = losses['none'][0] if 'none' in losses else None
  lines = [f'## Held-out token loss at initialisation: {task}', '',
           f'Every method\'s state as `init` makes it (seeds 0..n-1), no '
           f'training step; the loss on `{eval_split}`, the rows that choose '
           f'the learning rate. `none` is the frozen model.', '',
           f'Command: `{stamp["command"]}`; commit {stamp["commit"]}; '
           f'{stamp["date"]}.', '',
           '| method | loss at init (mean) | minus frozen | per seed |',
           '|---|---:|---:|---|']
  for name, values in losses.items():
    mean = sum(values) / len(values)
    above = '—' if frozen is None else f'{mean - frozen:+.3f}'
    lines.append(f'| {name} | {mean:.3f} | {above} | '
                 f'{" / ".join(f"{v:.3f}" for v in values)} |')
  return '\n'.join(lines) + '\n'


def table_for(task: str):
  """The table module (nlu or lm) whose config file runs TASK."""
  nlu_tasks = sorted(config_lib.load_file(nlu.CONFIG).TASKS)
  flags.one_of('task', task, sorted(lm.TASK_NAMES) + nlu_tasks)
  return nlu if task in nlu_tasks else lm


def main(argv):
  task = flags.TASK.value or 'e2e_nlg'
  table = table_for(task)
  module = config_lib.load_file(table.CONFIG)
  args = flags.parsed(argv, 'experiments.init_loss', table.CONFIG, '',
                      methods=module.METHODS, seeds=2,
                      unused=('full', 'workdir', 'tasks'))
  config = common.configured(f'{table.CONFIG}:{task}', args.base)
  losses = initial_losses(config, args.methods, args.seeds)
  text = render(losses, task, config.task.eval_split, provenance.stamp(
      args.command, exclude=('experiments/results',)))
  out = args.out or (
      os.path.join(lm.results_folder(task), 'init_loss.md')
      if table is lm else
      os.path.join(nlu.results_folder(), f'init_loss_{task}.md'))
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  atomic.write_text(out, text)
  print(text)


if __name__ == '__main__':
  flags.run(main, 'configs/lm.py (configs/nlu.py for an NLU --task)')
