"""Nothing lost, nothing silent: a workdir refuses another config or a second
live run, writes are atomic, a torn log line is skipped, the best state
survives a resume, and non-finite or decayed-by-rank state never happens."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config, train_command
from ntk_prefix import atomic, methods, train, workdir as workdir_lib
from ntk_prefix.build import build
from ntk_prefix.optimizer import make_optimizer
from ntk_prefix.steps import _check_finite, make_eval_step, place_frozen, run_eval


def _metrics_bytes(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
    return f.read()


@pytest.fixture(scope='module')
def finished_run(tiny_encoder, prepared_dir, tmp_path_factory):
  """A finished 4-step ntk_attention run: (config, workdir)."""
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=4,
                  checkpoint_every=2, eval_every=2,
                  async_checkpoints=False)
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(c, workdir)
  return c, workdir


def test_rerun_with_another_method_is_refused_before_compute(finished_run):
  c, workdir = finished_run
  before = _metrics_bytes(workdir)
  other = tiny_config(c.model.path, c.task.prepared_dir, total_steps=4,
                      **{'method.name': 'lora'})
  t0 = time.time()
  out = subprocess.run(train_command(other, workdir), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert time.time() - t0 < 60
  assert "method.name: 'ntk_attention' recorded, 'lora' now" in out.stderr
  assert 'new --workdir' in out.stderr
  assert _metrics_bytes(workdir) == before
  assert json.load(open(os.path.join(workdir, 'config.json')))[
      'method']['name'] == 'ntk_attention'


def test_forced_change_with_unfitting_checkpoint_is_an_error(finished_run):
  c, workdir = finished_run
  before = _metrics_bytes(workdir)
  other = tiny_config(c.model.path, c.task.prepared_dir, total_steps=4,
                      **{'method.name': 'lora'})
  with pytest.raises(workdir_lib.WorkdirError, match='does not fit'):
    train.train_and_evaluate(other, workdir, allow_config_change=True)
  # Nothing was rewritten: not the log, not the recorded config.
  assert _metrics_bytes(workdir) == before
  assert json.load(open(os.path.join(workdir, 'config.json')))[
      'method']['name'] == 'ntk_attention'


def test_resumable_fields_may_change(finished_run):
  c, workdir = finished_run
  recorded = json.load(open(os.path.join(workdir, 'config.json')))
  longer = tiny_config(c.model.path, c.task.prepared_dir, total_steps=8,
                       checkpoint_every=2, eval_every=2, eval_batch_size=8)
  assert workdir_lib.differing_keys(recorded, longer) == {}
  lr = tiny_config(c.model.path, c.task.prepared_dir, total_steps=4,
                   checkpoint_every=2, eval_every=2,
                   **{'optimizer.lr': 0.5})
  assert list(workdir_lib.differing_keys(recorded, lr)) == ['optimizer.lr']
  # A field added to the codebase since the run, at its default, is no
  # difference; set to something else, it is.
  older = json.loads(json.dumps(recorded))
  del older['init_from'], older['method']['preset']
  same = tiny_config(c.model.path, c.task.prepared_dir, total_steps=4,
                     checkpoint_every=2, eval_every=2)
  assert workdir_lib.differing_keys(older, same) == {}
  same.init_from = '/elsewhere'
  assert list(workdir_lib.differing_keys(older, same)) == ['init_from']
  # Another method's options are not this run's: an ntk_attention run
  # differs in its own options only.
  assert recorded['method']['name'] == 'ntk_attention'
  other = json.loads(json.dumps(recorded))
  other['method']['lora']['rank'] += 1
  assert workdir_lib.differing_keys(other, same_run(c)) == {}
  other['method']['ntk_attention']['init_std'] *= 2
  assert list(workdir_lib.differing_keys(other, same_run(c))) == [
      'method.ntk_attention.init_std']
  # Under a preset, options are compared as the values the run uses: a run
  # of official_vit recorded while 'normal' was the default init (the
  # preset's 'zeros' applied) is the run that preset gives today.
  vit = json.loads(json.dumps(recorded))
  vit['method']['preset'] = 'official_vit'
  vit['method']['ntk_attention']['init'] = 'normal'
  now = same_run(c)
  now.method.preset = 'official_vit'
  assert workdir_lib.differing_keys(vit, now) == {}
  now.method.ntk_attention.phi_dropout = 0.5  # not the preset's 0.2
  assert workdir_lib.differing_keys(vit, now) == {
      'method.ntk_attention.phi_dropout': (0.2, 0.5)}
  # Without a preset the recorded value is the one used: another run.
  vit['method']['preset'] = ''
  now = same_run(c)
  assert workdir_lib.differing_keys(vit, now) == {
      'method.ntk_attention.init': ('normal', 'zeros')}


def same_run(c):
  return tiny_config(c.model.path, c.task.prepared_dir, total_steps=4,
                     checkpoint_every=2, eval_every=2)


def test_second_live_run_is_refused_and_a_killed_one_leaves_no_lock(
    tiny_encoder, prepared_dir, tmp_path):
  workdir = str(tmp_path)
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time; sys.path.insert(0, %r)\n' % REPO +
       'from ntk_prefix import workdir\n'
       f'with workdir.lock({workdir!r}):\n'
       '  print("locked", flush=True); time.sleep(120)\n'],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=2)
  t0 = time.time()
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f'in use by another live run \\(pid {holder.pid}'):
    train.train_and_evaluate(c, workdir)
  assert time.time() - t0 < 60
  assert not os.path.exists(os.path.join(workdir, 'config.json'))
  holder.send_signal(signal.SIGKILL)  # a kill releases the lock with it
  holder.wait()
  train.train_and_evaluate(c, workdir)
  assert os.path.exists(os.path.join(workdir, 'final_metrics.json'))


def test_torn_metrics_line_is_skipped_on_resume(tiny_encoder, prepared_dir,
                                                tmp_path, capfd):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=4,
                  checkpoint_every=2, async_checkpoints=False)
  train.train_and_evaluate(c, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "train_lo')  # a kill mid-write
  c.total_steps = 6
  train.train_and_evaluate(c, str(tmp_path))
  assert 'skipping a torn or malformed row' in capfd.readouterr().err
  rows = workdir_lib.read_metrics(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'train_loss' in r] == list(range(1, 7))
  with open(tmp_path / 'metrics.jsonl') as f:  # the file is whole again
    assert all(json.loads(l) for l in f)


def test_best_score_survives_a_resume(tiny_encoder, prepared_dir, tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=4, eval_every=2,
                  checkpoint_every=2, async_checkpoints=False)
  train.train_and_evaluate(c, str(tmp_path))
  # An earlier evaluation no later one can beat: best/ must then stay.
  path = tmp_path / 'metrics.jsonl'
  rows = [json.loads(l) for l in open(path)]
  for r in rows:
    if 'eval_accuracy' in r and r['step'] == 2:
      r['eval_accuracy'] = 2.0
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  best = (tmp_path / 'best' / 'method_state.safetensors').read_bytes()
  c.total_steps = 8
  train.train_and_evaluate(c, str(tmp_path))
  # Without the restored score, a later evaluation would have replaced it.
  assert (tmp_path / 'best' / 'method_state.safetensors').read_bytes() == best


def _eval_state(c, state_dir):
  from ntk_prefix import export
  s = build(c)
  frozen, sharding = place_frozen(s)
  _, params = export.load(state_dir, s.model_cfg)
  trainable = {'method': params, 'head': export.load_head(state_dir)}
  return run_eval(s, make_eval_step(s, sharding), trainable,
                        frozen)


def test_loss_type_best_metric_keeps_the_lowest(tiny_encoder, prepared_dir,
                                                tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=12, eval_every=2,
                  best_metric='eval_loss', **{'optimizer.lr': 3e-2})
  train.train_and_evaluate(c, str(tmp_path))
  losses = [r['eval_loss'] for r in
            workdir_lib.read_metrics(str(tmp_path / 'metrics.jsonl'))
            if 'eval_loss' in r]
  assert np.argmin(losses) != np.argmax(losses)
  got = _eval_state(c, str(tmp_path / 'best'))['eval_loss']
  np.testing.assert_allclose(got, min(losses), rtol=1e-5)


def test_errors_before_the_first_step(tiny_encoder, prepared_dir, tmp_path):
  def fails(match, **overrides):
    c = tiny_config(tiny_encoder, prepared_dir, **overrides)
    with pytest.raises(ValueError, match=match):
      train.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / 'metrics.jsonl')

  fails(r'eval_batch_size=6 is not divisible by the mesh data axis \(4',
        eval_batch_size=6, **{'mesh.data': 4})
  fails(r"model.dtype='float16' is not supported", **{'model.dtype':
                                                       'float16'})
  fails(r"best_metric='eval_acuracy' is not a metric.*'eval_accuracy'",
        best_metric='eval_acuracy')


def test_check_finite_stops_on_non_finite_gradients(tmp_path):
  class Manager:
    def wait_until_finished(self):
      pass

    def latest_step(self):
      return 3

  out = {'train_loss': jnp.float32(0.7), 'grad_norm': jnp.float32(np.nan)}
  with pytest.raises(FloatingPointError, match='grad_norm=nan at step 4.*'
                     r'last good checkpoint \(step 3\)'):
    _check_finite(out, 4, Manager(), str(tmp_path))
  out['grad_norm'] = jnp.float32(1.0)
  assert _check_finite(out, 4, Manager(), str(tmp_path)) == \
      pytest.approx(0.7)
  out['state_finite'] = jnp.bool_(False)  # finite step, overflowed state
  with pytest.raises(FloatingPointError, match='updated state is not finite'):
    _check_finite(out, 4, Manager(), str(tmp_path))


@pytest.mark.parametrize('name', methods.ADAPTING)
def test_weight_decay_by_name(hf_checkpoint, name):
  """One update with zero gradients: exactly the matrices shrink."""
  from ntk_prefix import checkpoints, models
  path, _ = hf_checkpoint('bert')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg)
  params = {'method': method.init(jax.random.PRNGKey(0), frozen),
            'head': models.init_classifier_head(jax.random.PRNGKey(1), cfg, 2)}
  params = jax.tree.map(lambda x: x + 0.5, params)  # no zeros to hide in
  c = tiny_config(path, '', **{'optimizer.schedule': 'constant',
                               'optimizer.lr': 1.0,
                               'optimizer.weight_decay': 0.5})
  opt, _ = make_optimizer(c, method.no_decay)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  vectors = {'bias', 'b1', 'b2', 'scale', 'down_bias', 'up_bias', 'num',
             'den', 'pool_query'} | ({'k'} if name == 'ntk_attention' else
                                     set())
  for path, u in flat:
    leaf = str(getattr(path[-1], 'key', path[-1]))
    decayed = bool(np.any(np.asarray(u) != 0))
    assert decayed == (leaf not in vectors), (name, path)
  # Stacked per-layer biases are 2-d: rank alone would have decayed them.
  two_d_vectors = [p for p, u in flat if np.ndim(u) > 1 and str(getattr(
      p[-1], 'key', p[-1])) in vectors]
  if name in ('iapt', 'ntk_attention'):
    assert two_d_vectors


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
  path = tmp_path / 'a.json'
  atomic.write_json(str(path), {'v': 1})
  with pytest.raises(RuntimeError):
    with atomic.open_for_write(str(path)) as f:
      f.write('{"v": 2, "half')
      raise RuntimeError('killed')
  assert json.loads(path.read_text()) == {'v': 1}
  folder = tmp_path / 'best'
  with atomic.replace_dir(str(folder)) as tmp:
    open(os.path.join(tmp, 'x'), 'w').write('old')
  with pytest.raises(RuntimeError):
    with atomic.replace_dir(str(folder)) as tmp:
      open(os.path.join(tmp, 'x'), 'w').write('new, half')
      raise RuntimeError('killed')
  assert (folder / 'x').read_text() == 'old'
  assert sorted(os.listdir(tmp_path)) == ['a.json', 'best']  # no leftovers


def test_provenance_marks_untracked_source_files(tmp_path, monkeypatch):
  from ntk_prefix import provenance
  git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True,
                                  capture_output=True)
  git('init', '-q')
  (tmp_path / 'ntk_prefix').mkdir()
  (tmp_path / 'ntk_prefix' / 'a.py').write_text('x = 1\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'a')
  monkeypatch.chdir(tmp_path)
  assert not provenance.git_commit().endswith('+changes')
  (tmp_path / 'notes.txt').write_text('not source')
  assert not provenance.git_commit().endswith('+changes')
  (tmp_path / 'ntk_prefix' / 'new.py').write_text('y = 2\n')
  assert provenance.git_commit().endswith('+changes')
  assert not provenance.git_commit(exclude=('ntk_prefix/new.py',)).endswith(
      '+changes')
  # A results table, tracked and rewritten while its runs train, is output:
  # the runs it starts next are stamped with the clean commit.
  (tmp_path / 'ntk_prefix' / 'new.py').unlink()
  (tmp_path / 'experiments' / 'results').mkdir(parents=True)
  (tmp_path / 'experiments' / 'results' / 'table.md').write_text('old\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'b')
  (tmp_path / 'experiments' / 'results' / 'table.md').write_text('new\n')
  assert not provenance.git_commit().endswith('+changes')
  # So is prose: a tracked README edited while a table runs.
  (tmp_path / 'README.md').write_text('old\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  (tmp_path / 'README.md').write_text('new\n')
  assert not provenance.git_commit().endswith('+changes')
  (tmp_path / 'ntk_prefix' / 'a.py').write_text('x = 2\n')  # tracked code
  assert provenance.git_commit().endswith('+changes')
  (tmp_path / 'ntk_prefix' / 'a.py').write_text('x = 1\n')
  assert not provenance.git_commit().endswith('+changes')
  (tmp_path / 'experiments' / 'x.py').write_text('z = 3\n')
  assert provenance.git_commit().endswith('+changes')


def test_runs_of_one_process_record_the_commit_it_started_at(
    tiny_encoder, prepared_dir, tmp_path, monkeypatch):
  """A table's process trains dozens of runs with the code it imported:
  moving the checkout meanwhile does not change the commit its runs record
  (two real runs, the checkout moved between them)."""
  from ntk_prefix import provenance, sweep
  git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True,
                                  capture_output=True)
  commit = lambda m: git('-c', 'user.name=t', '-c', 'user.email=t@t',
                         'commit', '-q', '--allow-empty', '-m', m)
  git('init', '-q')
  commit('a')
  monkeypatch.chdir(tmp_path)
  provenance.process_commit.cache_clear()
  first = provenance.git_commit()
  recorded = []
  for i in range(2):
    config = tiny_config(tiny_encoder, prepared_dir, total_steps=2, seed=i)
    recorded.append(sweep.run_point(config, str(tmp_path / f'run{i}'))[
        'commit'])
    commit('moved while this process runs')
  assert provenance.git_commit() != first  # the checkout moved twice
  assert recorded == [first, first]
  provenance.process_commit.cache_clear()
