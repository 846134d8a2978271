"""Every experiment command takes absl flags and the table's config flag as
train does; mistakes are refused before anything runs."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('module', ['experiments.nlu', 'experiments.lm',
                                    'experiments.vision',
                                    'experiments.init_loss',
                                    'experiments.ntk_init',
                                    'experiments.prefix_length'])
def test_helpfull_lists_the_shared_flags(module):
  out = run(module, '--helpfull')  # absl exits 1 after help
  for flag in ('--config:', '--workdir:', '--methods:', '--seeds:',
               '--out:', '--task:'):
    assert flag in out.stdout, (module, flag, out.stderr[-2000:])


def test_mistakes_are_refused_with_the_fix(tmp_path):
  work = f'--workdir={tmp_path}'
  misspelt = run('experiments.nlu', work, '--config=configs/nlu.py',
                 '--config.total_step=5')
  assert misspelt.returncode != 0
  assert 'total_steps' in misspelt.stderr  # the nearest valid key
  with_arg = run('experiments.nlu', work, '--config=configs/nlu.py:rte',
                 '--config.total_steps=5')
  assert with_arg.returncode != 0
  assert 'pass --config=configs/nlu.py' in with_arg.stderr
  no_file = run('experiments.lm', work, '--config.total_steps=5')
  assert no_file.returncode != 0
  assert 'add --config=configs/lm.py' in no_file.stderr
  other = run('experiments.lm', work, '--task=e2e_nlg',
              '--config=configs/nlu.py')
  assert other.returncode != 0
  assert 'pass --config=configs/lm.py' in other.stderr
  task = run('experiments.lm', work, '--task=sst2')
  assert task.returncode != 0 and "--task=sst2: not one of" in task.stderr
  unused = run('experiments.prefix_length', work, '--full')
  assert unused.returncode != 0
  assert '--full: experiments.prefix_length has no such option' in \
      unused.stderr
  row = run('experiments.prefix_length', work, '--methods=lora,iapt')
  assert row.returncode != 0 and '--methods=iapt: not one of' in row.stderr
  assert not os.listdir(tmp_path)  # nothing ran
