"""Configs: a misspelt key, a field the base does not have, and a config
that cannot run are each refused with the fix, before any compute."""
import pytest

from conftest import REPO, tiny_config
from ntk_prefix import config as config_lib
from ntk_prefix.build import build


def test_command_line_through_absl_names_a_misspelt_key(tmp_path):
  """train's command line is absl + an ml_collections config flag; a
  misspelt --config.KEY stops before any compute with the nearest keys, and
  a config file that adds a field the base does not have is an error too
  (the base config is locked)."""
  import subprocess
  import sys
  run = lambda *a: subprocess.run(
      [sys.executable, '-m', 'ntk_prefix.train', *a], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  proc = run(f'--config={REPO}/configs/default.py:runlocal',
             f'--workdir={tmp_path / "w"}', '--config.modle.path=x')
  assert proc.returncode != 0
  assert "Nearest valid keys: ['model.path'" in proc.stdout + proc.stderr
  assert not (tmp_path / 'w').exists()
  bad = tmp_path / 'bad.py'
  bad.write_text('from ntk_prefix.config import base_config\n'
                 'def get_config():\n  c = base_config()\n'
                 '  c.optimizer.learning_rate = 0.1\n  return c\n')
  proc = run(f'--config={bad}', f'--workdir={tmp_path / "w"}')
  assert proc.returncode != 0
  assert 'learning_rate' in proc.stdout + proc.stderr
  assert 'locked' in proc.stdout + proc.stderr


def test_config_errors_are_clear(tiny_encoder, prepared_dir, tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir)
  with pytest.raises(KeyError, match=r"optimizer.lr'\]|Nearest.*optimizer.lr"):
    config_lib.override(c, 'optimizer.lrr', '1')
  with pytest.raises(ValueError, match='needs 64 devices but 8'):
    build(tiny_config(tiny_encoder, prepared_dir, **{'mesh.data': 64}))
  with pytest.raises(ValueError, match='batch_size=6 is not divisible'):
    build(tiny_config(tiny_encoder, prepared_dir, batch_size=6,
                            **{'mesh.data': 4}))
  with pytest.raises(ValueError, match="has no split 'test'"):
    build(tiny_config(tiny_encoder, prepared_dir,
                            **{'task.eval_split': 'test'}))
  with pytest.raises(FileNotFoundError, match='missing data file'):
    build(tiny_config(tiny_encoder, str(tmp_path / 'p'), **{
        'task.data_dir': str(tmp_path / 'nowhere')}))
  with pytest.raises(ValueError, match='encoder'):
    build(tiny_config(tiny_encoder, prepared_dir,
                            **{'task.name': 'gsm8k'}))
  with pytest.raises(ValueError, match='exceeds'):
    build(tiny_config(tiny_encoder, prepared_dir, **{
        'task.max_length': 60, 'method.name': 'p_tuning_v2'}))
  with pytest.raises(ValueError, match='more than task.max_length'):
    build(tiny_config(tiny_encoder, str(tmp_path / 'q'), **{
        'task.truncate': False, 'task.max_length': 8}))


@pytest.mark.parametrize('overrides,match', [
    ({'optimizer.lr': 0.0}, r'optimizer.lr=0.0: .*positive'),
    ({'optimizer.lr': float('nan')}, r'optimizer.lr=nan'),
    ({'optimizer.schedule': 'cosin'}, r"optimizer.schedule='cosin' is not"),
    ({'optimizer.accumulate_steps': 0}, r'accumulate_steps=0: must be'),
    ({'optimizer.accumulate_steps': 5}, r'total_steps=12 is not a multiple of '
     r'optimizer.accumulate_steps=5: its last 2 .* total_steps=15 or 10'),
    ({'total_steps': 0}, r'total_steps=0: must be at least 1'),
    ({'optimizer.warmup_steps': -1}, r'warmup_steps=-1'),
])
def test_optimizer_and_step_mistakes_stop_before_loading(tiny_encoder,
                                                         prepared_dir,
                                                         overrides, match):
  """Values that would train nothing, or drop micro-steps without a word
  (an accumulation left unfinished at the end), name the field and fix."""
  c = tiny_config(tiny_encoder, prepared_dir, **overrides)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)
