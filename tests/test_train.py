"""The training system: the loss falls, kill-and-resume = uninterrupted, NaN
stops, corrupt checkpoints fall back, sweeps tabulate."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import REPO, losses, read_metrics, tiny_config, train_command
from ntk_prefix import checkpoints, config as config_lib, train


def test_loss_falls_and_outputs_written(tiny_encoder, prepared_dir, tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=30,
                  **{'optimizer.lr': 1e-2})
  metrics = train.train_and_evaluate(c, str(tmp_path))
  ls = losses(str(tmp_path))
  assert np.mean(ls[-5:]) < np.mean(ls[:5])
  correct = metrics['eval_accuracy'] * 32  # of the 32 eval rows
  assert abs(correct - round(correct)) < 1e-6, correct
  last_eval = [r for r in read_metrics(str(tmp_path)) if 'eval_loss' in r][-1]
  assert last_eval['eval_accuracy'] == metrics['eval_accuracy']
  for name in ('config.json', 'final_metrics.json', 'final/method.json',
               'final/method_state.safetensors', 'best/method.json'):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / 'tensorboard')
  # Written at once with the metrics: a kill leaves all of it or none.
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert final['wall_seconds'] > 0 and final['device'] == 'cpu'
  assert final['commit'] and final['eval_accuracy'] == metrics['eval_accuracy']
  rows = read_metrics(str(tmp_path))
  assert {'step', 'train_loss', 'learning_rate',
          'examples_per_second'} <= set(rows[0])
  assert any('eval_accuracy' in r for r in rows)


def test_kill_and_resume_equals_uninterrupted(tiny_encoder, prepared_dir,
                                              tmp_path):
  overrides = {'total_steps': 40, 'checkpoint_every': 5, 'eval_every': 20}
  straight = tiny_config(tiny_encoder, prepared_dir, **overrides)
  train.train_and_evaluate(straight, str(tmp_path / 'straight'))

  workdir = str(tmp_path / 'killed')
  cmd = train_command(tiny_config(tiny_encoder, prepared_dir, **overrides),
                      workdir)
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once a mid-run checkpoint exists
    done = [d for d in os.listdir(ckpts)] if os.path.isdir(ckpts) else []
    if any(d.isdigit() and 10 <= int(d) < 40 for d in done):
      break
    assert proc.poll() is None, 'the run ended before it could be killed'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'final_metrics.json'))
  resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from step' in resumed.stderr
  a = read_metrics(str(tmp_path / 'straight'))
  b = read_metrics(workdir)
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for ra, rb in zip(a, b):
    for k in ra:
      if k not in ('examples_per_second',):
        np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=k)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_encoder,
                                                       prepared_dir, tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, checkpoint_every=1,
                  **{'optimizer.lr': 1e30, 'optimizer.warmup_steps': 0,
                     'optimizer.schedule': 'constant',
                     'optimizer.clip_norm': 1e30})
  with pytest.raises(FloatingPointError, match=r'at step \d+.*last good'):
    train.train_and_evaluate(c, str(tmp_path))
  steps = [int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]
  assert steps  # the good steps before the NaN were kept
  from ntk_prefix import checkpointing
  manager = checkpointing.checkpoint_manager(str(tmp_path), c)
  for step in steps:  # and none of them holds a non-finite number
    state = manager.restore(step)
    assert all(np.all(np.isfinite(x)) for x in
               __import__('jax').tree.leaves(state['trainable'])), step
  assert not os.path.exists(tmp_path / 'final_metrics.json')


def test_corrupt_latest_checkpoint_falls_back(tiny_encoder, prepared_dir,
                                              tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=8,
                  checkpoint_every=4, async_checkpoints=False)
  train.train_and_evaluate(c, str(tmp_path))
  latest = tmp_path / 'checkpoints' / '8'
  for root, _, files in os.walk(latest):  # truncate every file
    for f in files:
      open(os.path.join(root, f), 'w').close()
  c.total_steps = 10
  train.train_and_evaluate(c, str(tmp_path))
  steps = [r['step'] for r in read_metrics(str(tmp_path)) if 'train_loss' in r]
  assert steps == list(range(1, 11))  # 5..8 replayed from checkpoint 4


def test_sweep_writes_table(tiny_encoder, prepared_dir, tmp_path):
  from ntk_prefix import sweep
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(
      'import sys\nsys.path.insert(0, %r)\n' % os.path.join(REPO, 'configs') +
      'from default import get_config\n'
      'def get_sweep():\n'
      "  return [{'method.name': 'ntk_attention'}, {'method.name': 'lora'}]\n")
  overrides = [('model.path', tiny_encoder), ('task.name', 'cb'),
               ('task.prepared_dir', prepared_dir), ('total_steps', '4'),
               ('progress', 'false'), ('mesh.data', '1')]
  rows = sweep.run(f'{cfg}:runlocal', str(tmp_path / 'sweep'), overrides)
  assert [r['method.name'] for r in rows] == ['ntk_attention', 'lora']
  table = (tmp_path / 'sweep' / 'results.md').read_text()
  assert 'eval_accuracy' in table and 'lora' in table
  assert (tmp_path / 'sweep' / 'results.csv').exists()


def test_plot_command_writes_png(tiny_encoder, prepared_dir, tmp_path):
  from ntk_prefix import plot
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=4)
  train.train_and_evaluate(c, str(tmp_path / 'run'))
  out = plot.plot([str(tmp_path / 'run')], str(tmp_path / 'c.png'))
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_accumulation_bfloat16_and_remat_train(tiny_encoder, prepared_dir,
                                               tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=4, **{
      'optimizer.accumulate_steps': 2, 'model.dtype': 'bfloat16',
      'model.remat': 'full', 'method.name': 'prefix_tuning'})
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert np.all(np.isfinite(losses(str(tmp_path))))
  assert np.isfinite(metrics['eval_loss'])


def test_scanned_layers_and_pallas_attention_train_alike(tiny_encoder,
                                                         prepared_dir,
                                                         tmp_path):
  """model.scan_layers and model.attention_impl change how, not what: the
  same run's losses agree with the unrolled xla run's."""
  runs = {}
  for name, extra in (('plain', {}), ('scan', {'model.scan_layers': True}),
                      ('pallas', {'model.attention_impl': 'pallas'})):
    c = tiny_config(tiny_encoder, prepared_dir, total_steps=4, **extra)
    train.train_and_evaluate(c, str(tmp_path / name))
    runs[name] = losses(str(tmp_path / name))
  np.testing.assert_allclose(runs['scan'], runs['plain'], rtol=1e-4)
  np.testing.assert_allclose(runs['pallas'], runs['plain'], rtol=1e-4)


def test_generation_task_on_a_decoder(hf_checkpoint, prepared_dir, tmp_path,
                                      capsys):
  """GSM8K as language modelling: loss on the answer tokens only; then the
  run decodes with `python -m ntk_prefix.generate`."""
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  tok = checkpoints.load_tokenizer(checkpoints.default_decoder_path())
  tok.save_pretrained(path)
  c = tiny_config(path, prepared_dir, total_steps=4, **{
      'task.name': 'gsm8k', 'task.eval_split': 'test', 'task.max_length': 96,
      'task.train_limit': 16, 'task.eval_limit': 8, 'method.name': 'iapt',
      'best_metric': 'eval_token_accuracy'})
  metrics = train.train_and_evaluate(c, str(tmp_path))
  assert np.isfinite(metrics['eval_loss']) and metrics['eval_perplexity'] > 1
  from ntk_prefix.data import pipeline
  ds = pipeline.load('gsm8k', 'test', tok, manual_dir=c.task.data_dir or
                     config_lib.default_manual_dir(), data_dir=prepared_dir,
                     max_length=96, truncate=True, limit=8)
  row = ds.arrays
  # The loss covers the answer, never the question; prompt_mask the question.
  assert np.all(row['loss_mask'] * row['prompt_mask'] == 0)
  # Rows whose answer was cut by truncation have no loss tokens; others do.
  assert row['loss_mask'].sum() > 0
  fits = row['attention_mask'].sum(1) < 96
  assert np.all(row['loss_mask'][fits].sum(1) > 0)

  from ntk_prefix import generate
  for extra in ([], ['--beams', '2']):
    capsys.readouterr()
    generate.main(['--workdir', str(tmp_path), '--prompt', 'Question: 2+2?',
                   '--prompt', 'Question: a longer one, 3+4?',
                   '--max_new_tokens', '3'] + extra)
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l['prompt'] for l in lines] == ['Question: 2+2?',
                                            'Question: a longer one, 3+4?']
    assert all(isinstance(l['completion'], str) for l in lines)


def test_vision_pipeline_check_on_digits(hf_checkpoint, prepared_dir,
                                         tmp_path):
  """A pipeline check (tiny random ViT, sklearn digits), not a result."""
  path, _ = hf_checkpoint('vit')
  c = tiny_config(path, prepared_dir, total_steps=4, **{
      'task.name': 'digits', 'task.eval_split': 'test',
      'method.name': 'ntk_attention'})
  metrics = train.train_and_evaluate(c, str(tmp_path))
  correct = metrics['eval_accuracy'] * 32  # eval_limit rows of the digits
  assert abs(correct - round(correct)) < 1e-6, correct
  assert np.isfinite(metrics['eval_loss'])


def test_a_finished_run_from_before_its_wall_time_was_kept_is_read(tmp_path):
  """A table killed between training's final write and its own stamp (the
  code before train wrote the wall time itself) left final metrics without
  a wall time: read as not recorded, neither a crash nor a retraining."""
  from ntk_prefix import sweep
  (tmp_path / 'final_metrics.json').write_text(json.dumps(
      {'step': 40, 'eval_loss': 1.19, 'trainable_params': 5760}))
  c = config_lib.get_config(os.path.join(REPO, 'configs/default.py:runlocal'))
  metrics = sweep.run_point(c, str(tmp_path))
  assert metrics['wall_seconds'] is None and metrics['eval_loss'] == 1.19
  assert os.listdir(tmp_path) == ['final_metrics.json']  # nothing trained


def test_a_sweeps_points_compile_one_train_step(tiny_encoder, prepared_dir):
  """Learning rate, schedule and length are not in the compiled step (its
  rate is an argument), so every point of a search is one program that the
  compilation cache serves after the first."""
  import jax
  from ntk_prefix.build import build, init_trainable
  from ntk_prefix.data import batches
  from ntk_prefix.optimizer import make_optimizer
  from ntk_prefix.steps import make_steps, place_frozen

  def program(**overrides):
    c = tiny_config(tiny_encoder, prepared_dir, **overrides)
    s = build(c)
    frozen, sharding = place_frozen(s)
    opt, schedule = make_optimizer(c, s.method.no_decay)
    params = init_trainable(s)
    step, _ = make_steps(s, opt, sharding)
    batch = batches.train_batch(s.train_ds, 0, c.batch_size, c.seed)
    return step.lower(params, opt.init(params), frozen, batch,
                      jax.random.PRNGKey(0), np.float32(schedule(3))
                      ).as_text()

  first = program(**{'optimizer.lr': 1e-3})
  assert program(**{'optimizer.lr': 3e-2, 'optimizer.schedule': 'linear',
                    'optimizer.warmup_steps': 2}, total_steps=20) == first
  # Still a program of its configuration: another method is another.
  assert program(**{'method.name': 'lora'}) != first
