"""Our layers on HF checkpoints equal the transformers PyTorch models."""
import numpy as np
import pytest
import torch

from conftest import text_batch
from ntk_prefix import checkpoints, models

TOL = 1e-4


def _ours(path, inputs):
  cfg, frozen, head = checkpoints.load(path)
  out = models.apply(cfg, frozen, {}, inputs)
  if head is not None:  # the checkpoint's own classifier
    out['class_logits'] = models.classifier_logits(head, out['pooled'])
  return cfg, out


@pytest.mark.parametrize('family', ['bert', 'roberta'])
def test_encoder_classifier_logits(hf_checkpoint, family):
  path, model = hf_checkpoint(family)
  ids, mask = text_batch(97)
  if family == 'roberta':
    ids = np.where(mask == 1, ids, 1)  # RoBERTa positions come from pad ids
  types = np.zeros_like(ids)
  if family == 'bert':
    types[:, 5:] = 1
  cfg, out = _ours(path, {'input_ids': ids, 'attention_mask': mask,
                          'token_type_ids': types})
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types, dtype=torch.long),
                output_hidden_states=True)
  hidden = ref.hidden_states[-1].numpy()
  m = mask[..., None].astype(bool)
  np.testing.assert_allclose(np.where(m, out['hidden'], 0),
                             np.where(m, hidden, 0), atol=TOL)
  np.testing.assert_allclose(out['class_logits'], ref.logits.numpy(), atol=TOL)


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
@pytest.mark.parametrize('pad_right', [True, False])
def test_decoder_lm_logits(hf_checkpoint, family, pad_right):
  path, model = hf_checkpoint(family)
  ids, mask = text_batch(97, pad_right=pad_right)
  cfg, out = _ours(path, {'input_ids': ids, 'attention_mask': mask})
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions, dtype=torch.long)).logits
  m = mask[..., None].astype(bool)
  np.testing.assert_allclose(np.where(m, out['logits'], 0),
                             np.where(m, ref.numpy(), 0), atol=TOL)


def test_llama_is_grouped_query(hf_checkpoint):
  path, _ = hf_checkpoint('llama')
  cfg, frozen, _ = checkpoints.load(path)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (6, 2, 8)
  assert frozen['layer_0']['attn']['key']['dense']['kernel'].shape == (48, 16)


def test_vit_logits(hf_checkpoint):
  path, model = hf_checkpoint('vit')
  pixels = np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32)
  cfg, out = _ours(path, {'pixel_values': pixels})
  with torch.no_grad():
    ref = model(pixel_values=torch.tensor(pixels)).logits.numpy()
  np.testing.assert_allclose(out['class_logits'], ref, atol=TOL)


def test_weights_really_loaded(hf_checkpoint):
  """The loaded tree equals the checkpoint, not a fresh random init."""
  path, model = hf_checkpoint('bert')
  _, frozen, _ = checkpoints.load(path)
  ref = model.bert.encoder.layer[1].attention.self.query.weight.detach().numpy()
  np.testing.assert_array_equal(
      frozen['layer_1']['attn']['query']['dense']['kernel'], ref.T)
