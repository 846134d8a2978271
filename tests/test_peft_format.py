"""Our adapters in Hugging Face PEFT's format, checked with PEFT itself."""
import copy

import jax
import numpy as np
import pytest
import torch

from conftest import text_batch
from ntk_prefix import checkpoints, methods, models, peft_format

peft = pytest.importorskip('peft')


def _noisy(tree, seed=0):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize('family,name', [
    ('gpt2', 'p_tuning_v2'), ('gpt2', 'prefix_tuning'),
    ('llama', 'p_tuning_v2'), ('llama', 'lora')])
def test_exported_adapter_gives_our_logits_in_peft(hf_checkpoint, tmp_path,
                                                   family, name):
  path, hf_model = hf_checkpoint(family)
  cfg, frozen, _ = checkpoints.load(path)
  method = methods.get(name, cfg, {'length': 4} if name != 'lora' else {})
  params = _noisy(method.init(jax.random.PRNGKey(0), frozen))
  peft_format.save(str(tmp_path), method, params, path)
  ids, _ = text_batch(cfg.vocab_size, batch=2, length=7)
  mask = np.ones_like(ids)
  ours = models.apply(cfg, frozen, params,
                      {'input_ids': ids, 'attention_mask': mask},
                      adapter=method)['logits']
  model = peft.PeftModel.from_pretrained(copy.deepcopy(hf_model),
                                         str(tmp_path)).eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(mask.astype(np.int64))
                   ).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

  # And back: the imported adapter gives the same logits here.
  method2, params2 = peft_format.load(str(tmp_path), cfg)
  again = models.apply(cfg, frozen, params2,
                       {'input_ids': ids, 'attention_mask': mask},
                       adapter=method2)['logits']
  np.testing.assert_allclose(again, ours, rtol=1e-5, atol=1e-5)


def test_peft_trained_adapter_imports(hf_checkpoint, tmp_path):
  """A LoRA adapter made and saved by PEFT loads onto our model."""
  path, hf_model = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  model = peft.get_peft_model(copy.deepcopy(hf_model), peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'o_proj'],
      init_lora_weights=False))
  model.save_pretrained(str(tmp_path))
  method, params = peft_format.load(str(tmp_path), cfg)
  ids, _ = text_batch(cfg.vocab_size, batch=2, length=6)
  mask = np.ones_like(ids)
  ours = models.apply(cfg, frozen, params,
                      {'input_ids': ids, 'attention_mask': mask},
                      adapter=method)['logits']
  with torch.no_grad():
    theirs = model.eval()(input_ids=torch.from_numpy(ids.astype(np.int64))
                          ).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_unexportable_states_are_clear_errors(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint('gpt2')
  cfg, frozen, _ = checkpoints.load(path)
  for name, options, match in [
      ('p_tuning_v2', {'shift_positions': False}, 'shift_positions'),
      ('lora', {}, 'LLaMA'), ('ntk_attention', {}, 'no PEFT counterpart')]:
    method = methods.get(name, cfg, options)
    with pytest.raises(methods.MethodError, match=match):
      peft_format.save(str(tmp_path), method,
                       method.init(jax.random.PRNGKey(0), frozen))
  path_l, _ = hf_checkpoint('llama')
  cfg_l, _, _ = checkpoints.load(path_l)
  method = methods.get('p_tuning_v2', cfg_l, {'length': 3})
  peft_format.save(str(tmp_path / 'l'), method,
                   method.init(jax.random.PRNGKey(0)))
  with pytest.raises(methods.MethodError, match='other dimensions'):
    peft_format.load(str(tmp_path / 'l'), cfg)
