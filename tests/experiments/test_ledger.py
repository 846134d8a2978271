"""A table's finished runs outlive their folders: the ledger committed next
to its results (experiments/ledger.py)."""
import json
import os
import shutil

import pytest

from experiments import common, ledger
from ntk_prefix import atomic, workdir as workdir_lib

SPEC = 'configs/nlu.py:cb'


@pytest.fixture
def trainings(monkeypatch):
  """run_point without training: records the config and a final metric that
  tells runs apart; counts the runs it 'trained'."""
  trained = []

  def fake_run_point(config, workdir):
    final = os.path.join(workdir, 'final_metrics.json')
    if not os.path.exists(final):
      os.makedirs(os.path.join(workdir, 'final'), exist_ok=True)
      workdir_lib.record_config(workdir, config)
      atomic.write_json(final, {
          'eval_loss': config.optimizer.lr + config.seed, 'commit': 'abc1234',
          'wall_seconds': 1.0, 'trainable_params': 5})
      trained.append(workdir)
    with open(final) as f:
      return json.load(f)

  monkeypatch.setattr(common, 'run_point', fake_run_point)
  return trained


def test_a_run_whose_folder_is_gone_is_read_from_the_ledger(tmp_path,
                                                             trainings):
  root, path = str(tmp_path / 'runs' / 'cb'), str(tmp_path / 'runs.jsonl')
  point = {'optimizer.lr': 0.01}
  workdir, first = common.run_seed(SPEC, root, 'lora', point, 1, {}, path)
  assert len(trainings) == 1 and first['eval_loss'] == pytest.approx(1.01)
  assert list(ledger.read(path)) == ['cb/lora/lr=0.01,seed=1']
  shutil.rmtree(tmp_path / 'runs')  # a fresh machine: the folders are gone
  again = common.run_seed(SPEC, root, 'lora', point, 1, {}, path)
  assert again == (workdir, first) and len(trainings) == 1
  # The same folder name for another config is another run: trained, and
  # its record replaces the old one.
  _, other = common.run_seed(SPEC, root, 'lora', point, 1,
                             {'total_steps': 7}, path)
  assert len(trainings) == 2
  assert ledger.read(path)['cb/lora/lr=0.01,seed=1']['config'][
      'total_steps'] == 7
  # Without a ledger, a missing folder trains.
  shutil.rmtree(tmp_path / 'runs')
  common.run_seed(SPEC, root, 'lora', point, 1, {'total_steps': 7})
  assert len(trainings) == 3


def test_a_run_another_table_trained_is_not_trained_again(tmp_path,
                                                         trainings):
  """A run is its config: ntk_init's zeros runs are the E2E table's
  ntk_attention runs, found in that table's ledger beside its own, and
  then kept in its own."""
  results = tmp_path / 'results'
  table, other = str(results / 'e2e'), str(results / 'e2e' / 'init.md')
  point = {'optimizer.lr': 0.01}
  _, first = common.run_seed(SPEC, str(tmp_path / 'lm' / 'e2e'), 'lora',
                             point, 0, {}, ledger.path_for(table))
  again = common.run_seed(SPEC, str(tmp_path / 'init' / 'e2e'), 'lora',
                          {'method.lora.rank': 8, **point}, 0, {},
                          ledger.path_for(other))[1]
  assert again == first and len(trainings) == 1
  assert list(ledger.read(ledger.path_for(other))) == [
      'e2e/lora/rank=8,lr=0.01,seed=0']
  # Another config found nowhere: trained.
  common.run_seed(SPEC, str(tmp_path / 'init' / 'e2e'), 'lora',
                  {'method.lora.rank': 4, **point}, 0, {},
                  ledger.path_for(other))
  assert len(trainings) == 2


def test_scores_are_kept_with_the_run_they_score(tmp_path, trainings):
  """A generation table's scores come from decoding a run's checkpoint:
  kept, they need neither the folder nor a decode; a run retrained with
  other final metrics is scored again."""
  root, path = str(tmp_path / 'runs' / 'e2e'), str(tmp_path / 'runs.jsonl')
  decoded = []

  def score(workdir, metrics):
    decoded.append(workdir)
    return {'bleu': 0.5}

  grid = [{'optimizer.lr': 0.01}, {'optimizer.lr': 0.03}]
  kw = dict(select='eval_loss', higher_is_better=False, score=score,
            log=lambda s: None, max_extra=0, ledger=path)
  first = common.tune_and_repeat(SPEC, 'lora', grid, 2, root, **kw)
  assert len(decoded) == 2 and len(trainings) == 3
  shutil.rmtree(tmp_path / 'runs')
  assert common.tune_and_repeat(SPEC, 'lora', grid, 2, root, **kw) == first
  assert len(decoded) == 2 and len(trainings) == 3
  record = ledger.read(path)['e2e/lora/lr=0.01,seed=1']
  assert record['scores'] == {'bleu': 0.5}
  record['metrics']['eval_loss'] = 9.0  # not what these scores were of
  assert ledger.scores(path, record['run'], record['metrics'],
                       lambda: {'bleu': 0.1}) == {'bleu': 0.1}


def test_a_kept_run_never_scored_is_trained_again_to_be_scored(tmp_path,
                                                              trainings):
  """A table stopped between a run's training and its decode: the ledger
  has the run without scores, and a fresh machine has no checkpoint to
  decode. The run is trained again, scored, and its scores kept."""
  root = str(tmp_path / 'runs' / 'e2e')
  path = ledger.path_for(str(tmp_path / 'results' / 'e2e'))  # alone there
  grid = [{'optimizer.lr': 0.01}, {'optimizer.lr': 0.03}]
  for point, seed in [(grid[0], 0), (grid[1], 0), (grid[0], 1)]:
    common.run_seed(SPEC, root, 'lora', point, seed, {}, path)
  shutil.rmtree(tmp_path / 'runs')

  def score(workdir, metrics):
    assert os.path.isdir(os.path.join(workdir, 'final')), workdir
    return {'bleu': 0.5}

  kw = dict(select='eval_loss', higher_is_better=False, score=score,
            log=lambda s: None, max_extra=0, ledger=path)
  record = common.tune_and_repeat(SPEC, 'lora', grid, 2, root,
                                  score_reads_checkpoint=True, **kw)
  assert [r['scores'] for r in record['runs']] == [{'bleu': 0.5}] * 2
  assert len(trainings) == 3 + 2  # the two scored runs, not the search's
  kept = ledger.read(path)
  assert kept['e2e/lora/lr=0.01,seed=1']['scores'] == {'bleu': 0.5}
  assert 'scores' not in kept['e2e/lora/lr=0.03,seed=0']
  # Kept with scores now: a fresh machine trains nothing.
  shutil.rmtree(tmp_path / 'runs')
  assert common.tune_and_repeat(SPEC, 'lora', grid, 2, root,
                                score_reads_checkpoint=True, **kw) == record
  assert len(trainings) == 5


def test_runs_from_uncommitted_code_are_not_kept(tmp_path):
  path = str(tmp_path / 'runs.jsonl')
  ledger.add(path, 'a', {'seed': 0}, {'commit': 'abc1234+changes'})
  assert ledger.read(path) == {}
  ledger.add(path, 'a', {'seed': 0}, {'commit': 'abc1234'})
  assert list(ledger.read(path)) == ['a']


def test_a_damaged_ledger_is_named_with_its_line(tmp_path):
  path = tmp_path / 'runs.jsonl'
  path.write_text('{"run": "a", "config": {}, "metrics": {}}\n{"run": \n')
  with pytest.raises(SystemExit, match=r'runs.jsonl line 2 is not JSON'):
    ledger.read(str(path))


def test_where_a_ledger_lives():
  assert ledger.path_for('experiments/results/e2e_nlg') == \
      'experiments/results/e2e_nlg/runs.jsonl'
  assert ledger.path_for('experiments/results/nlu/ntk_init_sst2.md') == \
      'experiments/results/nlu/ntk_init_sst2.runs.jsonl'


_ADD_RUNS = """
import sys
from experiments import ledger
for i in range(30):
  ledger.add(sys.argv[1], sys.argv[2] + str(i), {'seed': i},
             {'commit': 'abc1234'})
"""


def test_two_commands_writing_one_ledger_lose_no_run(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  path = str(tmp_path / 'runs.jsonl')
  # Two fresh processes (forking this one, JAX threads and all, can hang).
  workers = [subprocess.Popen([sys.executable, '-c', _ADD_RUNS, path, p],
                              cwd=REPO) for p in 'ab']
  assert [w.wait(timeout=120) for w in workers] == [0, 0]
  assert len(ledger.read(path)) == 60
