"""An exported method state loads back to the same logits, and refuses a
model of other dimensions."""
import jax
import numpy as np
import pytest

from conftest import text_batch
from ntk_prefix import checkpoints, export, methods, models


def test_export_round_trip_and_dimension_check(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get('prefix_tuning', cfg, {'length': 3, 'mlp_hidden': 8})
  params = method.init(jax.random.PRNGKey(0))
  export.save(str(tmp_path / 'x'), method, params, path)
  method2, params2 = export.load(str(tmp_path / 'x'), cfg)
  ids, mask = text_batch(97)
  batch = {'input_ids': ids, 'attention_mask': mask}
  a = models.apply(cfg, frozen, params, batch, adapter=method)['logits']
  b = models.apply(cfg, frozen, params2, batch, adapter=method2)['logits']
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other, _ = hf_checkpoint('gpt2')
  other_cfg, _, _ = checkpoints.load(other)
  with pytest.raises(methods.MethodError, match='differ in'):
    export.load(str(tmp_path / 'x'), other_cfg)


def test_word_initialised_state_loads_without_a_tokenizer(hf_checkpoint,
                                                          tmp_path):
  """Loading checks shapes; a state whose init read words (Prefix-Tuning's
  official preset) must not need the tokenizer again to be loaded."""
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)

  class Tok:
    def __call__(self, text, add_special_tokens=False):
      return {'input_ids': [3, 5, 7]}

  opts = {'length': 3, 'mlp_hidden': 8, 'init': 'words', 'init_fit_steps': 2}
  method = methods.get('prefix_tuning', cfg, opts, tokenizer=Tok())
  params = method.init(jax.random.PRNGKey(0), frozen, Tok())
  export.save(str(tmp_path / 'x'), method, params, path)
  _, loaded = export.load(str(tmp_path / 'x'), cfg, frozen)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
