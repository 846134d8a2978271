"""Named presets reproduce their sources' configurations; official_vit holds
k at exactly zero while Z trains."""
import dataclasses

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import tiny_config
from ntk_prefix import checkpoints, config as config_lib, methods, train


@pytest.fixture(scope='module')
def bert(hf_checkpoint):
  path, _ = hf_checkpoint('bert')
  cfg, frozen, _ = checkpoints.load(path)
  return cfg, frozen


def _std(x):
  return float(np.std(np.asarray(x)))


def test_ntk_attention_presets(bert):
  cfg, frozen = bert
  vit = methods.get('ntk_attention', cfg, preset='official_vit')
  assert (vit.opts.init, vit.opts.train_k, vit.opts.phi_dropout) == (
      'zeros', False, 0.2)
  params = vit.init(jax.random.PRNGKey(0))
  assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(params))
  glm = methods.get('ntk_attention', cfg, preset='official_glm')
  z = glm.init(jax.random.PRNGKey(0))['z']
  assert 0.9e-4 < _std(z) < 1.1e-4  # torch.randn(...) / 10000


def test_p_tuning_v2_official_lengths_follow_the_task_scripts(bert):
  cfg, _ = bert
  for task, length in (('rte', 20), ('boolq', 40), ('cb', 10)):
    m = methods.get('p_tuning_v2', cfg, preset='official', task=task)
    assert (m.opts.length, m.opts.dropout, m.opts.init_std) == (length, 0.1,
                                                                 0.02)


def test_lopa_official_init(bert):
  cfg, frozen = bert
  m = methods.get('lopa', cfg, preset='official')
  p = m.init(jax.random.PRNGKey(0))
  assert 0.9 < _std(p['z_s']) < 1.1  # nn.Embedding: N(0, 1)
  for head in ('u', 'v'):
    assert p[head]['w1'].shape == (cfg.hidden_size, cfg.hidden_size)
    assert 0.017 < _std(p[head]['w1']) < 0.023
    assert 0.017 < _std(p[head]['w2']) < 0.023
    assert float(np.abs(p[head]['b2']).max()) == 0.0
  assert m.opts.dropout == 0.1


def test_prefix_tuning_official_length_is_the_init_texts_tokens(bert):
  cfg, _ = bert

  class Tok:
    def __call__(self, text, add_special_tokens=False):
      return {'input_ids': list(range(len(text.split())))}

  m = methods.get('prefix_tuning', cfg, {'init_text': 'three word text'},
                  preset='official', tokenizer=Tok())
  assert (m.opts.length, m.opts.init_fit_steps, m.opts.init_fit_lr,
          m.opts.mlp_hidden) == (3, 500, 1e-4, 512)
  with pytest.raises(methods.MethodError, match='token count'):
    methods.get('prefix_tuning', cfg, preset='official')


def test_config_values_other_than_the_default_win_over_a_preset(bert):
  cfg, _ = bert
  c = config_lib.base_config()
  c.method.preset = 'official_vit'
  assert methods.from_config(c.method, cfg).opts.phi_dropout == 0.2
  c.method.ntk_attention.phi_dropout = 0.5
  assert methods.from_config(c.method, cfg).opts.phi_dropout == 0.5
  # A former default (configs recorded before it changed hold it) is no
  # override either: the preset's init stays.
  c.method.ntk_attention.init = 'normal'
  assert methods.from_config(c.method, cfg).opts.init == 'zeros'
  # The values a run uses, read off its config without building the method.
  assert methods.effective_options(c.method) == dataclasses.asdict(
      methods.from_config(c.method, cfg).opts)
  c.method.preset = 'offical_vit'
  with pytest.raises(methods.MethodError, match=r"Did you mean \['official_"
                     r"vit'"):
    methods.from_config(c.method, cfg)


def test_official_vit_keeps_k_at_zero_while_z_trains(tiny_encoder,
                                                     prepared_dir, tmp_path):
  c = tiny_config(tiny_encoder, prepared_dir, total_steps=10, **{
      'method.preset': 'official_vit', 'optimizer.lr': 1e-2,
      'optimizer.warmup_steps': 0})
  train.train_and_evaluate(c, str(tmp_path))
  state = load_file(str(tmp_path / 'final' / 'method_state.safetensors'))
  assert float(np.abs(state['k']).max()) == 0.0
  assert float(np.abs(state['z']).max()) > 1e-4
  # Without the preset's train_k=False, JAX's d|k|/dk = 1 at 0 moves k.
  c2 = tiny_config(tiny_encoder, prepared_dir, total_steps=10, **{
      'method.ntk_attention.init': 'zeros', 'optimizer.lr': 1e-2,
      'optimizer.warmup_steps': 0})
  train.train_and_evaluate(c2, str(tmp_path / 'trained_k'))
  k2 = load_file(str(tmp_path / 'trained_k' / 'final' /
                     'method_state.safetensors'))['k']
  assert float(np.abs(k2).max()) > 0.0


def test_presets_command_lists_every_official_preset_with_its_source():
  from ntk_prefix.methods.__main__ import presets_text
  text = presets_text()
  for line in ('ntk_attention / official_vit', 'ntk_attention / official_glm',
               'p_tuning_v2 / official', 'lopa / official',
               'prefix_tuning / official', 'iapt / paper'):
    assert line in text
  assert text.count('source: ') == 6
  assert 'ntk_vit_cifar.py' in text and 'run_rte_bert.sh' in text


def test_tables_set_each_method_beside_its_option_changing_presets():
  rows = methods.table_rows(methods.NAMES)
  assert rows[:3] == ('ntk_attention', 'ntk_attention:official_vit',
                      'ntk_attention:official_glm')
  assert 'p_tuning_v2:official' in rows and 'lopa:official' in rows
  # IAPT's 'paper' preset is its default: no second row of the same runs.
  assert 'iapt' in rows and not any(r.startswith('iapt:') for r in rows)
  assert [r for r in rows if ':' not in r] == list(methods.NAMES)


def test_every_row_of_the_vision_table_builds_on_a_vit():
  """A ViT has no tokenizer: the vision table leaves out the presets that
  start from words (Prefix-Tuning's official real-word init), and every row
  it keeps builds its method on a ViT."""
  from ntk_prefix.models.config import ModelConfig
  vision = config_lib.load_file('configs/vision.py')
  vit = ModelConfig(family='vit', hidden_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=4, head_dim=16, intermediate_size=128,
                    max_positions=17, image_size=16, patch_size=4)
  assert 'prefix_tuning:official' in methods.table_rows(methods.NAMES)
  assert 'prefix_tuning:official' not in vision.METHODS
  assert 'ntk_attention:official_vit' in vision.METHODS
  for row in vision.METHODS:
    c = vision.get_config('digits')
    c.method.name, _, c.method.preset = row.partition(':')
    method = methods.from_config(c.method, vit, 'digits', tokenizer=None)
    assert method.name == c.method.name
