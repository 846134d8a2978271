"""python -m ntk_prefix.compress: a trained explicit prefix becomes
NTK-Attention state that reproduces its attention, loadable and trainable."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_config
from ntk_prefix import checkpoints, compress, export, generate, methods
from ntk_prefix import peft_format
from ntk_prefix import train
from ntk_prefix.build import build, init_trainable


@pytest.fixture(scope='module')
def prefix_run(tiny_encoder, prepared_dir, tmp_path_factory):
  """A P-Tuning v2 run on the tiny encoder (CB), trained a few steps."""
  workdir = str(tmp_path_factory.mktemp('ptv2'))
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=6, **{
      'method.name': 'p_tuning_v2', 'method.p_tuning_v2.length': 16,
      'method.p_tuning_v2.init_std': 1.0, 'optimizer.lr': 1e-2})
  train.train_and_evaluate(c, workdir)
  return c, workdir


def test_compress_fits_far_better_than_the_closed_form(prefix_run, tmp_path):
  c, workdir = prefix_run
  out = str(tmp_path / 'ntk')
  report = compress.compress(c, os.path.join(workdir, 'final'), out,
                             steps=300, rows=16, log=lambda s: None)
  closed = np.mean([l['closed_form'] for l in report['layers']])
  fitted = np.mean([l['fitted'] for l in report['layers']])
  assert fitted * 10 <= closed, (fitted, closed)
  assert report['prefix_length'] == 16
  for side in ('before', 'after'):
    assert {'eval_accuracy', 'eval_loss', 'train_step_seconds'} <= set(
        report[side])
  # The output is a ntk_attention state (with the run's classifier head)
  # that loads, decodes like a run folder, and trains on as an init.
  cfg, frozen, _ = checkpoints.load(c.model.path)
  method, state = export.load(os.path.join(out, 'final'), cfg, frozen)
  assert method.name == 'ntk_attention' and set(state) == {'z', 'k'}
  assert export.load_head(os.path.join(out, 'final')) is not None
  assert json.load(open(os.path.join(out, 'config.json')))['method'][
      'name'] == 'ntk_attention'
  again = tiny_config(c.model.path, c.task.prepared_dir, **{
      'method.name': 'ntk_attention',
      'init_from': os.path.join(out, 'final')})
  start = init_trainable(build(again))
  np.testing.assert_array_equal(start['method']['z'], state['z'])
  np.testing.assert_array_equal(  # the head trained with the prefix, too
      start['head']['out']['kernel'],
      export.load_head(os.path.join(out, 'final'))['out']['kernel'])
  wrong = tiny_config(c.model.path, c.task.prepared_dir, **{
      'method.name': 'lora', 'init_from': os.path.join(out, 'final')})
  with pytest.raises(ValueError, match='holds a ntk_attention state'):
    init_trainable(build(wrong))


def test_compress_takes_a_peft_prefix_tuning_folder(hf_checkpoint, prepared_dir,
                                                    tmp_path, capsys):
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  checkpoints.load_tokenizer(
      checkpoints.default_decoder_path()).save_pretrained(path)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get('p_tuning_v2', cfg, {'length': 8, 'init_std': 1.0})
  params = method.init(jax.random.PRNGKey(0))
  peft_dir = str(tmp_path / 'peft')
  peft_format.save(peft_dir, method, params)
  c = tiny_config(path, prepared_dir, **{
      'task.name': 'e2e_nlg', 'task.max_length': 64, 'task.eval_split':
      'validation', 'task.train_limit': 16, 'task.eval_limit': 8,
      'best_metric': 'eval_loss', 'method.name': 'p_tuning_v2'})
  out = str(tmp_path / 'ntk')
  report = compress.compress(c, peft_dir, out, steps=50, rows=8,
                             log=lambda s: None)
  assert report['source_method'] == 'p_tuning_v2'
  assert report['prefix_length'] == 8
  assert all(l['fitted'] < l['closed_form'] for l in report['layers'])
  loaded, _ = export.load(os.path.join(out, 'final'), cfg, frozen)
  assert loaded.name == 'ntk_attention'
  capsys.readouterr()  # `generate` decodes with the compressed folder
  generate.main(['--workdir', out, '--prompt', 'name[Aromi]',
                 '--max_new_tokens', '3'])
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line['prompt'] == 'name[Aromi]' and 'completion' in line


def test_compress_refuses_other_adapters(prefix_run, tmp_path, capsys):
  c, run = prefix_run
  cfg, frozen, _ = checkpoints.load(c.model.path)
  lora = methods.get('lora', cfg)
  export.save(str(tmp_path / 'lora'), lora, lora.init(jax.random.PRNGKey(0)))
  with pytest.raises(compress.CompressError,
                     match='holds a lora state; compress needs an explicit '
                     'prefix'):
    compress.compress(c, str(tmp_path / 'lora'), str(tmp_path / 'o'))
  with pytest.raises(compress.CompressError, match='found neither'):
    compress.compress(c, str(tmp_path), str(tmp_path / 'o'))
  # Nothing the user keeps is overwritten: a run folder as --out.
  for out in (run, os.path.join(run, 'final')):  # the adapter itself, too
    with pytest.raises(compress.CompressError, match='already holds files'):
      compress.compress(c, os.path.join(run, 'final'), out)
  with pytest.raises(compress.CompressError, match='--rows=0'):
    compress.compress(c, os.path.join(run, 'final'), str(tmp_path / 'o'),
                      rows=0)
  # A prefix trained on another model: its dimensions, not a shape crash.
  wider = dataclasses.replace(cfg, num_layers=cfg.num_layers + 1)
  other = methods.get('p_tuning_v2', wider, {'length': 4})
  export.save(str(tmp_path / 'other'), other,
              other.init(jax.random.PRNGKey(0)))
  with pytest.raises(compress.CompressError,
                     match=r'trained on .*differ in .*num_layers'):
    compress.compress(c, str(tmp_path / 'other'), str(tmp_path / 'o'))
  with pytest.raises(SystemExit, match='error: --adapter: .*num_layers'):
    compress.main([
        f'--adapter={tmp_path / "other"}', f'--out={tmp_path / "o"}',
        f'--config={REPO}/configs/default.py:runlocal', '--config.task.name=cb',
        f'--config.model.path={c.model.path}', '--config.task.train_limit=8',
        f'--config.task.prepared_dir={c.task.prepared_dir}',
        '--config.task.eval_limit=8', '--config.mesh.data=1'])
  compress.main(['--help'])
  assert '--adapter' in capsys.readouterr().out
