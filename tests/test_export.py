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


@pytest.mark.parametrize('row', methods.table_rows(methods.ADAPTING))
def test_every_table_row_loads_back_without_its_tokenizer(row, hf_checkpoint,
                                                          tmp_path):
  """The tables decode each run from its exported state, with the model but
  no tokenizer at hand: every method and preset must load that way
  (Prefix-Tuning's official preset, initialised from words, did not)."""
  path, _ = hf_checkpoint('llama', vocab_size=49152)
  cfg, frozen, _ = checkpoints.load(path)
  tokenizer = checkpoints.load_tokenizer(checkpoints.default_decoder_path())
  name, _, preset = row.partition(':')
  options = {'init_fit_steps': 2} if name == 'prefix_tuning' else {}
  method = methods.get(name, cfg, options, preset=preset, task='e2e_nlg',
                       tokenizer=tokenizer)
  params = method.init(jax.random.PRNGKey(0), frozen, tokenizer)
  export.save(str(tmp_path / 'x'), method, params, path)
  _, loaded = export.load(str(tmp_path / 'x'), cfg, frozen)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
